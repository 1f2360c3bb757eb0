"""Making `prepare`'s shards (train/data/prepare.py): each shard's rows read, decoded through
`decode_pixels` (`decode_image`'s pixels, without torch) and written as one .npy, in this process or in `--workers` processes.

A worker makes whole shards: it is sent which rows a shard covers (pieces of local parquet files, or
an image folder's file names), reads them itself, and writes the shard beside its final name. Only
the shard's record (counts, checksum) comes back. Sending each row's JPEG to a worker and its pixels
back held a worker at 0.63-0.80 of a plain decode loop (README, Data pipeline): the pipe's copies
land in new memory, which is slow on a VM, and the writing process needs a core of its own. A hub
source's rows arrive in this process, so there the workers decode row by row and this process
writes.
"""
import collections
import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import struct
import threading
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from train.common.atomic import atomic_write
from train.common.cores import usable_cores
from train.common.freed_memory import keep_freed_memory
from train.data.decode import decode_pixels, image_bytes, row_name
from train.data.prepared import Preprocessing, ShardRecord, file_crc32, shard_name

Decoded = tuple[np.ndarray | None, str | None]  # a row's pixels, or None and the row's name

PARQUET_BATCH_ROWS = 16  # rows pyarrow reads at a time: a few MB of JPEGs


@dataclass(frozen=True)
class ParquetPiece:
    path: str
    start: int  # the file's rows [start, stop)
    stop: int


@dataclass(frozen=True)
class ShardRows:
    """The source rows shard `index` covers: pieces of local parquet files, read where the shard is
    made, or the rows' image cells ({"bytes", "path"}) as the source gave them (an image folder's
    give file names only; a hub dataset's hold the bytes)."""

    index: int
    column: str = ""
    pieces: tuple[ParquetPiece, ...] = ()
    given: tuple[dict, ...] = ()

    @property
    def rows(self) -> int:
        return len(self.given) + sum(piece.stop - piece.start for piece in self.pieces)

    @property
    def light(self) -> bool:
        """Whether it crosses to a worker in a few hundred bytes: it names its rows, holds none."""
        return all(cell.get("bytes") is None for cell in self.given)

    def cells(self) -> Iterator[dict]:
        yield from self.given
        for piece in self.pieces:
            yield from _piece_cells(piece, self.column)


def _piece_cells(piece: ParquetPiece, column: str) -> Iterator[dict]:
    """The piece's image cells, read with pyarrow from a memory map: 0.07 ms a 232-kB JPEG row on the
    2-core VM, where datasets took 0.27 (it copies every row's bytes into a new Python object)."""
    file = pq.ParquetFile(piece.path, memory_map=True)
    groups, first, position = [], 0, None
    for group in range(file.num_row_groups):
        rows = file.metadata.row_group(group).num_rows
        if first < piece.stop and piece.start < first + rows:
            groups.append(group)
            position = first if position is None else position
        first += rows
    if not groups:
        return
    for batch in file.iter_batches(PARQUET_BATCH_ROWS, row_groups=groups, columns=[column]):
        yield from _batch_cells(batch.column(0), max(piece.start - position, 0), min(piece.stop - position, len(batch)))
        position += len(batch)
        if position >= piece.stop:
            return


def _batch_cells(values: pa.Array, start: int, stop: int) -> Iterator[dict]:
    """Rows [start, stop) of a batch's column: indexed, not sliced (a struct's fields are its
    children, which a slice of the struct did not offset in every pyarrow release)."""
    images, paths = (values.field("bytes"), values.field("path")) if pa.types.is_struct(values.type) else (values, None)
    for row in range(start, stop):
        data = images[row]
        yield {"bytes": data.as_buffer() if data.is_valid else None, "path": None if paths is None else paths[row].as_py()}


class Decoder:
    """Makes shards (`made`), in this process or over `workers` processes. Rows of 256 px and more are
    decoded in a thread ahead of the writer, in this process or in each worker, so that the writing
    overlaps the decoding, where the CPUs leave a core for those threads."""

    def __init__(self, preprocessing: Preprocessing, to: Path, workers: int):
        self.preprocessing, self.to, self.workers = preprocessing, to, workers
        self.pool = self.thread = self.stop = self.progress = None

    def __enter__(self) -> "Decoder":
        _set_preprocessing(self.preprocessing)
        ahead = 3 * self.preprocessing.resolution**2 >= ROW_BYTES_WORTH_A_THREAD and max(1, self.workers) < usable_cores()
        if self.workers:
            context = multiprocessing.get_context("forkserver")
            self.stop, self.progress = context.Event(), context.Value("q", 0)
            self.pool = _decoding_processes(context, self.workers, self.preprocessing, ahead, self.stop, self.progress)
        elif ahead:
            self.thread = _decoding_thread()
        return self

    def __exit__(self, *exc) -> None:
        if self.stop is not None:
            self.stop.set()  # a worker leaves its shard at its next row, unwritten (Ctrl-C, an error here)
        for pool in (self.pool, self.thread):
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def made(self, shards: Iterable[ShardRows], bar: tqdm) -> Iterator[ShardRecord]:
        """Each shard's record once it is written whole: in order here, in the order they finish over workers."""
        shards = iter(shards)
        if self.pool is None:
            return (self._made_here(shard, bar) for shard in shards)
        return self._made_by_workers(shards, bar)

    def _made_here(self, shard: ShardRows, bar: tqdm) -> ShardRecord:
        """Written by this process: its rows decoded here, in a thread, or by the workers row by row."""
        return write_shard(self.to, shard.index, _counted(self.decoded(shard.cells()), bar), self.preprocessing.resolution)

    def decoded(self, cells: Iterable[dict]) -> Iterator[Decoded]:
        if self.pool is not None:
            return self._decoded_by_workers(cells)
        if self.thread is not None:
            return _decoded_ahead(self.thread, cells)
        return map(_decode_cell, cells)

    def _made_by_workers(self, shards: Iterator[ShardRows], bar: tqdm) -> Iterator[ShardRecord]:
        pending: set[Future] = set()
        shown = 0
        try:
            while True:
                while len(pending) < SHARDS_AHEAD_PER_WORKER * self.workers and (shard := next(shards, None)) is not None:
                    if not shard.light:  # its rows' bytes are here: the workers decode, this process writes
                        yield self._made_here(shard, bar)
                        continue
                    pending.add(self.pool.submit(_make_shard, shard, self.to, self.preprocessing.resolution))
                if not pending:
                    return
                finished, pending = wait(pending, timeout=PROGRESS_SECONDS, return_when=FIRST_COMPLETED)
                count = self.progress.value
                bar.update(count - shown)
                shown = count
                for future in finished:
                    yield self._result(future)
        finally:
            for future in pending:
                future.cancel()

    def _result(self, future: Future) -> ShardRecord:
        try:
            return future.result()
        except BrokenProcessPool as error:
            raise self._died(error) from None

    def _decoded_by_workers(self, cells: Iterable[dict]) -> Iterator[Decoded]:
        cells = list(cells)
        try:
            yield from self.pool.map(_decode_cell, cells, chunksize=max(1, len(cells) // (4 * self.workers)))
        except BrokenProcessPool as error:
            raise self._died(error) from None

    def _died(self, error: BrokenProcessPool) -> "DecodingProcessDied":
        return DecodingProcessDied(
            f"--workers {self.workers}: a decoding process died ({error}); the shards finished so far are kept and a"
            " rerun continues from them; rerun with --workers 0 to decode in this process and see the failure"
        )


class DecodingProcessDied(RuntimeError):
    """A --workers process ended without its rows (killed, out of memory, a crash in a decoder)."""


SHARDS_AHEAD_PER_WORKER = 2  # a worker's next shard waits in the pool: no pause between shards
PROGRESS_SECONDS = 0.5  # how often the progress bar takes the workers' count


def write_shard(to: Path, index: int, decoded: Iterable[Decoded], resolution: int) -> ShardRecord:
    """Shard `index` from its rows' decoding, each row written as it comes: at 1024 px a shard is
    hundreds of MB, and stacking it first (fresh pages, every one faulted in) cost more than decoding
    it (bench/prepare_speed.py)."""
    path, shape, skipped = to / shard_name(index), (3, resolution, resolution), []

    def write(tmp: Path) -> int:
        with open(tmp, "wb") as f:
            f.write(_npy_header((0, *shape)))  # a placeholder of the same length: the count comes last
            images = 0
            for pixels, name in decoded:
                if pixels is None:
                    skipped.append(name)
                    continue
                f.write(np.ascontiguousarray(pixels, np.uint8).reshape(shape).data)
                images += 1
            f.seek(0)
            f.write(_npy_header((images, *shape)))
        return images

    images = atomic_write(path, write)
    return ShardRecord(index, path.name, images, images + len(skipped), len(skipped), file_crc32(path), tuple(skipped))


NPY_HEADER_BYTES = 128  # room for any shape a shard has; a multiple of 64, as numpy aligns its own


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The header of a C-order uint8 .npy of this shape, NPY_HEADER_BYTES long whatever the shape
    (numpy reads the header's length from the header: np.load takes it as it takes its own)."""
    text = repr({"descr": "|u1", "fortran_order": False, "shape": shape}).encode("latin1")
    padding = NPY_HEADER_BYTES - len(np.lib.format.magic(1, 0)) - 2 - len(text) - 1
    return np.lib.format.magic(1, 0) + struct.pack("<H", len(text) + padding + 1) + text + b" " * padding + b"\n"


def _counted(decoded: Iterator[Decoded], bar: tqdm) -> Iterator[Decoded]:
    for row in decoded:
        yield row
        bar.update(1)


def _decode_cell(cell: dict) -> Decoded:
    """A row's pixels, or None and the row's name: skipped as training skips it (streaming.py's
    DecodedBatches._decoded), for any failure to read or decode, extreme shapes included."""
    data = b""
    try:
        data = image_bytes(cell)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per upsampled image would bury the progress bar
            return decode_pixels(data, _preprocessing.resolution, _preprocessing.celeba_crop, _preprocessing.background), None
    except Exception as error:
        return None, f"{row_name(cell, data)} ({type(error).__name__}: {str(error)[:200]})"


# Rows are decoded in a thread only where their writing is worth hiding: 480 rows at 64 px took 5%
# longer that way (the hand-offs cost more than the 12-KB writes), at 256 px 12% less, and at 1024
# px half as long (bench/prepare_speed.py, this project's 2-core machine). And only where a core is
# left for the threads. At 256 px, 1 worker with its thread made shards at 0.87-1.01 of the plain
# decode loop (medians of 4 bench runs), against 0.66-0.73 without; 2 workers with a thread each
# on 2 cores, 0.61, against 0.62-0.80 without.
ROW_BYTES_WORTH_A_THREAD = 128 << 10
ROWS_PER_TASK = 4  # rows a decoding thread takes at a time: fewer hand-offs between the threads
TASKS_AHEAD = 2  # how far it runs ahead of the writer: a few MB at 256 px, 24 at 1024


def _decoding_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="prepare-decode")


def _decode_cells(cells: list[dict]) -> list[Decoded]:
    return [_decode_cell(cell) for cell in cells]


def _decoded_ahead(thread: ThreadPoolExecutor, cells: Iterable[dict]) -> Iterator[Decoded]:
    """The rows decoded in `thread`, a few tasks ahead of the caller; the cells are read as they are
    needed (a worker reads its shard's rows here, overlapping the decoding too)."""
    window, cells = collections.deque(), iter(cells)
    while task := list(itertools.islice(cells, ROWS_PER_TASK)):
        window.append(thread.submit(_decode_cells, task))
        if len(window) > TASKS_AHEAD:
            yield from window.popleft().result()
    while window:
        yield from window.popleft().result()


# A decoding process's settings, set once where it starts rather than sent with every row.
_preprocessing: Preprocessing | None = None
_stop = _progress = None
_thread: ThreadPoolExecutor | None = None  # a worker's decoding thread, for rows worth one
_orphaned = threading.Event()  # the prepare process died (killed): nothing will read this worker's results
_making = threading.Lock()  # held while a shard is being made


def _set_preprocessing(preprocessing: Preprocessing) -> None:
    global _preprocessing
    _preprocessing = preprocessing


def _decoding_processes(context, workers: int, preprocessing: Preprocessing, ahead: bool, stop, progress) -> ProcessPoolExecutor:
    """Started from a forkserver, never forked from this process: a fork copies the locks other
    threads hold (the progress bar's, Arrow's, a training run's), and a worker that forked holding
    one waits forever; multiprocessing.Pool then waited forever too, for that worker's rows (it
    hung this project's test suite). An executor whose worker dies raises BrokenProcessPool instead."""
    # Imported once, in the server, not in every worker; without torch or datasets (this module's
    # imports, tested), the server started in 0.25 s, against 2.4 s with them (a third of a 1-worker
    # prepare of 1,920 images at 256 px).
    context.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(workers, context, initializer=_start_worker, initargs=(preprocessing, ahead, stop, progress))


def _start_worker(preprocessing: Preprocessing, ahead: bool, stop, progress) -> None:
    global _stop, _progress, _thread
    # A Ctrl-C reaches the whole process group: the prepare process ends the pool; a worker's own
    # KeyboardInterrupt would only add a traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()
    _set_preprocessing(preprocessing)
    _stop, _progress = stop, progress
    _thread = _decoding_thread() if ahead else None
    threading.Thread(target=_end_when_orphaned, args=(multiprocessing.parent_process(),), daemon=True).start()


def _end_when_orphaned(prepare_process: multiprocessing.process.BaseProcess) -> None:
    """Ends this worker once the prepare process is gone (a SIGKILL gives it no time to end its pool):
    a pool's worker would otherwise wait for its next task for ever, or go on writing shards into a
    folder that a rerun may be making. The process that asked for this one, not the forkserver, is
    its parent here, and its liveness a pipe it holds open."""
    multiprocessing.connection.wait([prepare_process.sentinel])
    _orphaned.set()
    with _making:  # a shard being made is left at its next row, its temporary file removed
        os._exit(0)


def _make_shard(shard: ShardRows, to: Path, resolution: int) -> ShardRecord:
    decoded = map(_decode_cell, shard.cells()) if _thread is None else _decoded_ahead(_thread, shard.cells())
    with _making:
        return write_shard(to, shard.index, _watched(decoded), resolution)


def _watched(decoded: Iterator[Decoded]) -> Iterator[Decoded]:
    """The rows, counted for the progress bar; the shard is left, unwritten, at the next row once the
    prepare process has stopped (Ctrl-C, an error: it is not kept waiting for whole shards) or died."""
    for row in decoded:
        if _stop.is_set() or _orphaned.is_set():
            raise ShardLeft("the prepare process stopped")
        yield row
        with _progress.get_lock():
            _progress.value += 1


class ShardLeft(RuntimeError):
    """A worker's shard left unwritten because the prepare process stopped."""
