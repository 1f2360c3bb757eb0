"""`python -m train.data prepare SOURCE --resolution R --to DIR`: decode every image once, as training
would (decode_image: --celeba-crop, --alpha-background), and store the pixels (train/data/prepared.py).

Shard k covers the source's rows k*rows_per_shard onwards, in the source's own order, so a rerun
after an interruption knows which rows a finished shard holds and skips them undecoded. A shard is
finished once it is written whole (atomic rename) and its record, checksum included, is in the
manifest (another atomic rename); a shard written but not yet recorded is made again.

    python -m train.data prepare hf:mattymchen/celeba-hq --resolution 256 --to /shared/celeba-hq-256 --workers 8
    python train/wgangp.py --data prepared:/shared/celeba-hq-256 --resolution 256
"""
import collections
import itertools
import multiprocessing
import signal
import struct
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from train.common.atomic import atomic_write
from train.common.failpoints import Failpoints
from train.data.decode import decode_image
from train.data.prepared import MANIFEST, Manifest, Preprocessing, ShardRecord, file_crc32, shard_name
from train.data.specs import DataSpec, DataSpecError, parquet_files, parse_data_spec
from train.data.streaming import _image_bytes, _row_name, image_column_of, load_source


Decoded = tuple[np.ndarray | None, str | None]  # a row's pixels, or None and the row's name


@dataclass(frozen=True)
class PrepareRequest:
    """The prepare command's flags, as one value."""

    source: str
    to: Path
    preprocessing: Preprocessing
    split: str = "train"
    image_column: str | None = None
    rows_per_shard: int = 1000
    workers: int = 0
    limit: int | None = None  # stop after this many source rows
    progress: bool = True


@dataclass(frozen=True)
class PrepareResult:
    manifest: Manifest
    written: list[int]  # shards made by this call; the others were finished before it


def prepare(request: PrepareRequest) -> PrepareResult:
    spec = parse_data_spec(request.source)
    if not spec.is_streamed:
        raise DataSpecError(f"{request.source}: only hf:, parquet: and image-folder sources can be prepared")
    to = Path(request.to)
    source = load_source(spec, request.split)
    column = image_column_of(source, spec, request.image_column)
    manifest = _resumed_or_new(request, to, _source_name(spec), column)
    cells = _cells(spec, source, column)
    if request.limit is not None:
        cells = itertools.islice(cells, request.limit)
    done, written = {shard.index for shard in manifest.shards}, []
    failpoints = Failpoints.from_environment()
    with Decoder(request) as decode, tqdm(desc=f"prepare {to}", unit="img", disable=not request.progress,
                                           initial=sum(s.source_rows for s in manifest.shards)) as bar:
        for index, chunk in enumerate(_chunks(cells, request.rows_per_shard)):
            if index in done:
                continue  # finished before: its rows were read past, never decoded
            counted = _counted(decode(chunk), bar)
            manifest.shards.append(_write_shard(to, index, counted, request.preprocessing.resolution))
            manifest.shards.sort(key=lambda shard: shard.index)
            manifest.write(to)
            written.append(index)
            bar.set_postfix(skipped=manifest.skipped, refresh=False)
            failpoints.pause("prepare_pause", f"after shard {index} was recorded", index)
    manifest.complete = True
    manifest.write(to)
    return PrepareResult(manifest, written)


PARQUET_BATCH_ROWS = 16  # rows pyarrow reads at a time: a few MB of JPEGs


def _cells(spec: DataSpec, source: datasets.IterableDataset, column: str) -> Iterator[dict]:
    """The source's image cells ({"bytes", "path"}, undecoded) in its own order. Local parquet is
    read with pyarrow from a memory map: 0.07 ms a 232-kB JPEG row on the 2-core VM, where datasets
    took 0.27 (it copies every row's bytes into a new Python object): a tenth of a 64-px decode."""
    if spec.kind == "parquet":
        return _parquet_cells(parquet_files(spec.name), column)
    return (row[column] for row in source.select_columns([column]).cast_column(column, datasets.Image(decode=False)))


def _parquet_cells(files: list[str], column: str) -> Iterator[dict]:
    for path in files:
        for batch in pq.ParquetFile(path, memory_map=True).iter_batches(PARQUET_BATCH_ROWS, columns=[column]):
            values = batch.column(0)
            images, paths = (values.field("bytes"), values.field("path")) if pa.types.is_struct(values.type) else (values, None)
            for row in range(len(values)):
                data = images[row]
                yield {"bytes": data.as_buffer() if data.is_valid else None, "path": None if paths is None else paths[row].as_py()}


def _source_name(spec: DataSpec) -> str:
    """The source as the manifest names it: local paths made absolute, so that a rerun from another
    folder is known as the same preparation."""
    if spec.kind == "folder":
        return str(Path(spec.name).resolve())
    if spec.kind == "parquet":
        return f"parquet:{Path(spec.name).expanduser().resolve()}"
    return str(spec)


def _resumed_or_new(request: PrepareRequest, to: Path, source: str, column: str) -> Manifest:
    """The manifest to continue: the folder's own when its settings are these, else a new one; a
    folder holding another preparation (or anything else) is refused."""
    wanted = Manifest(source, request.split, column, request.preprocessing, request.rows_per_shard)
    path = to / MANIFEST
    if path.exists():
        found = Manifest.from_json(path.read_text())
        if found.settings() != wanted.settings():
            raise DataSpecError(
                f"--to {to}: it holds a preparation of {found.source} with other settings ({found.preprocessing},"
                f" {found.rows_per_shard} rows a shard); rerun with those, or choose an empty folder"
            )
        for stale in to.glob("*.tmp.npy"):  # left by a kill mid-write (atomic_write's temporary name)
            stale.unlink()
        return found
    if to.exists() and any(to.iterdir()):
        raise DataSpecError(f"--to {to}: not empty and no {MANIFEST}; choose an empty folder")
    to.mkdir(parents=True, exist_ok=True)
    wanted.write(to)  # from here on the folder is this preparation's, even if killed before its first shard
    return wanted


def _chunks(cells: Iterable[dict], size: int) -> Iterator[list[dict]]:
    iterator = iter(cells)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _counted(decoded: Iterator[Decoded], bar: tqdm) -> Iterator[Decoded]:
    for row in decoded:
        yield row
        bar.update(1)


def _write_shard(to: Path, index: int, decoded: Iterable[Decoded], resolution: int) -> ShardRecord:
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


# Each decoding process's settings, set once where it starts rather than sent with every row.
_preprocessing: Preprocessing | None = None


def _set_preprocessing(preprocessing: Preprocessing) -> None:
    global _preprocessing
    _preprocessing = preprocessing


def _decode_cell(cell: dict) -> Decoded:
    """A row's pixels, or None and the row's name: skipped as training skips it (streaming.py's
    DecodedBatches._decoded), for any failure to read or decode, extreme shapes included."""
    data = b""
    try:
        data = _image_bytes(cell)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per upsampled image would bury the progress bar
            return decode_image(data, _preprocessing.resolution, _preprocessing.celeba_crop, _preprocessing.background).numpy(), None
    except Exception as error:
        return None, f"{_row_name(cell, data)} ({type(error).__name__}: {str(error)[:200]})"


class Decoder:
    """decode(chunk) -> one Decoded per row, in order: over `workers` processes (the whole chunk at
    once), or in this process, in a thread ahead of the writer for large rows, where the shard's
    writing then overlaps the decoding."""

    def __init__(self, request: PrepareRequest):
        self.request, self.pool, self.thread = request, None, None

    def __enter__(self):
        _set_preprocessing(self.request.preprocessing)
        if self.request.workers:
            self.pool = _decoding_processes(self.request)
            return lambda chunk: _decoded_by(self.pool, chunk, self.request.workers)
        if 3 * self.request.preprocessing.resolution**2 < ROW_BYTES_WORTH_A_THREAD:
            return lambda chunk: map(_decode_cell, chunk)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="prepare-decode")
        return lambda chunk: _decoded_ahead(self.thread, chunk)

    def __exit__(self, *exc) -> None:
        for pool in (self.pool, self.thread):
            if pool is not None:
                pool.shutdown(cancel_futures=True)


def _decoding_processes(request: PrepareRequest) -> ProcessPoolExecutor:
    """Started from a forkserver, never forked from this process: a fork copies the locks other
    threads hold (the progress bar's, Arrow's, a training run's), and a worker that forked holding
    one waits forever; multiprocessing.Pool then waited forever too, for that worker's rows (it
    hung this project's test suite). An executor whose worker dies raises BrokenProcessPool instead."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # imported once, in the server, not in every worker
    return ProcessPoolExecutor(request.workers, context, initializer=_start_worker, initargs=(request.preprocessing,))


def _start_worker(preprocessing: Preprocessing) -> None:
    # A Ctrl-C reaches the whole process group: the prepare process ends the pool; a worker's own
    # KeyboardInterrupt would only add a traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_preprocessing(preprocessing)


def _decoded_by(pool: ProcessPoolExecutor, chunk: list[dict], workers: int) -> Iterator[Decoded]:
    try:
        yield from pool.map(_decode_cell, chunk, chunksize=max(1, len(chunk) // (4 * workers)))
    except BrokenProcessPool as error:
        raise DecodingProcessDied(
            f"--workers {workers}: a decoding process died ({error}); the shards finished so far are kept and a"
            " rerun continues from them; rerun with --workers 0 to decode in this process and see the failure"
        ) from None


class DecodingProcessDied(RuntimeError):
    """A --workers process ended without its rows (killed, out of memory, a crash in a decoder)."""


# In this process, rows are decoded in a thread only where their writing is worth hiding: 480 rows
# at 64 px took 5% longer that way (the hand-offs cost more than the 12-KB writes), at 256 px 12%
# less, and at 1024 px half as long (bench/prepare_speed.py, this project's 2-core machine).
ROW_BYTES_WORTH_A_THREAD = 128 << 10
ROWS_PER_TASK = 4  # rows a decoding thread takes at a time: fewer hand-offs between the threads
TASKS_AHEAD = 2  # how far it runs ahead of the writer: a few MB at 256 px, 24 at 1024


def _decode_cells(cells: list[dict]) -> list[Decoded]:
    return [_decode_cell(cell) for cell in cells]


def _decoded_ahead(thread: ThreadPoolExecutor, chunk: list[dict]) -> Iterator[Decoded]:
    window = collections.deque()
    for start in range(0, len(chunk), ROWS_PER_TASK):
        window.append(thread.submit(_decode_cells, chunk[start : start + ROWS_PER_TASK]))
        if len(window) > TASKS_AHEAD:
            yield from window.popleft().result()
    while window:
        yield from window.popleft().result()
