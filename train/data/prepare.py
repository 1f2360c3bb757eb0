"""`python -m train.data prepare SOURCE --resolution R --to DIR`: decode every image once, as training
would (decode_image: --celeba-crop, --alpha-background), and store the pixels (train/data/prepared.py).

Shard k covers the source's rows k*rows_per_shard onwards, in the source's own order, so a rerun
after an interruption knows which rows a finished shard holds and skips them undecoded. A shard is
finished once it is written whole (atomic rename) and its record, checksum included, is in the
manifest (another atomic rename); a shard written but not yet recorded is made again.

    python -m train.data prepare hf:mattymchen/celeba-hq --resolution 256 --to /shared/celeba-hq-256 --workers 8
    python train/wgangp.py --data prepared:/shared/celeba-hq-256 --resolution 256
"""
import itertools
import multiprocessing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import datasets
import numpy as np
from tqdm.auto import tqdm

from train.common.atomic import atomic_write
from train.common.failpoints import Failpoints
from train.data.decode import decode_image
from train.data.prepared import MANIFEST, Manifest, Preprocessing, ShardRecord, file_crc32, shard_name
from train.data.specs import DataSpec, DataSpecError, parse_data_spec
from train.data.streaming import _image_bytes, _row_name, image_column_of, load_source


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
    cells = (row[column] for row in source.select_columns([column]).cast_column(column, datasets.Image(decode=False)))
    if request.limit is not None:
        cells = itertools.islice(cells, request.limit)
    done, written = {shard.index for shard in manifest.shards}, []
    failpoints = Failpoints.from_environment()
    with Decoder(request) as decode, tqdm(desc=f"prepare {to}", unit="img", disable=not request.progress,
                                           initial=sum(s.source_rows for s in manifest.shards)) as bar:
        for index, chunk in enumerate(_chunks(cells, request.rows_per_shard)):
            if index in done:
                continue  # finished before: its rows were read past, never decoded
            manifest.shards.append(_write_shard(to, index, decode(chunk), request.preprocessing.resolution))
            manifest.shards.sort(key=lambda shard: shard.index)
            manifest.write(to)
            written.append(index)
            bar.update(len(chunk))
            bar.set_postfix(skipped=manifest.skipped, refresh=False)
            failpoints.pause("prepare_pause", f"after shard {index} was recorded", index)
    manifest.complete = True
    manifest.write(to)
    return PrepareResult(manifest, written)


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


def _write_shard(to: Path, index: int, decoded: list[tuple[np.ndarray | None, str | None]], resolution: int) -> ShardRecord:
    images = [pixels for pixels, _ in decoded if pixels is not None]
    skipped = tuple(name for pixels, name in decoded if pixels is None)
    array = np.stack(images) if images else np.zeros((0, 3, resolution, resolution), np.uint8)
    path = to / shard_name(index)
    atomic_write(path, lambda tmp: np.save(tmp, array))
    return ShardRecord(index, path.name, len(images), len(decoded), len(skipped), file_crc32(path), skipped)


# Each decoding process's settings, set once where it starts rather than sent with every row.
_preprocessing: Preprocessing | None = None


def _set_preprocessing(preprocessing: Preprocessing) -> None:
    global _preprocessing
    _preprocessing = preprocessing


def _decode_cell(cell: dict) -> tuple[np.ndarray | None, str | None]:
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
    """decode(chunk) -> one (pixels, None) or (None, name) per row, in order: in this process, or
    over `workers` processes."""

    def __init__(self, request: PrepareRequest):
        self.request, self.pool = request, None

    def __enter__(self):
        _set_preprocessing(self.request.preprocessing)
        if self.request.workers:
            # fork, not the default of newer Pythons: the workers need nothing but this module's state
            context = multiprocessing.get_context("fork")
            self.pool = context.Pool(self.request.workers, _set_preprocessing, (self.request.preprocessing,))
            return lambda chunk: self.pool.map(_decode_cell, chunk, chunksize=max(1, len(chunk) // (4 * self.request.workers)))
        return lambda chunk: [_decode_cell(cell) for cell in chunk]

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
