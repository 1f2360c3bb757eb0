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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import datasets
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from train.common.failpoints import Failpoints
from train.common.writable import check_new_folder, written
from train.data.prepare_shards import Decoder, DecodingProcessDied, ParquetPiece, ShardRows
from train.data.prepared import MANIFEST, Manifest, Preprocessing, first_difference
from train.data.specs import DataSpec, DataSpecError, parquet_files, parse_data_spec
from train.data.streaming import image_column_of, load_source
from train.run.flags import shown

__all__ = ["DecodingProcessDied", "PrepareRequest", "PrepareResult", "prepare"]


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
    done, written = {shard.index for shard in manifest.shards}, []
    shards = (shard for shard in _shards(spec, source, column, request) if shard.index not in done)
    failpoints = Failpoints.from_environment()
    with Decoder(request.preprocessing, to, request.workers) as decoder, \
            tqdm(desc=f"prepare {to}", unit="img", disable=not request.progress, initial=sum(s.source_rows for s in manifest.shards)) as bar:
        for record in decoder.made(shards, bar):
            manifest.shards.append(record)
            manifest.shards.sort(key=lambda shard: shard.index)
            manifest.write(to)
            written.append(record.index)
            bar.set_postfix(skipped=manifest.skipped, refresh=False)
            failpoints.pause("prepare_pause", f"after shard {record.index} was recorded", record.index)
    manifest.complete = True
    manifest.write(to)
    return PrepareResult(manifest, sorted(written))


def _shards(spec: DataSpec, source: datasets.IterableDataset, column: str, request: PrepareRequest) -> Iterator[ShardRows]:
    """Local parquet is planned from its files' row counts, so a finished shard's rows are never read;
    other sources are read in order, and a finished shard's rows read past, undecoded."""
    if spec.kind == "parquet":
        return _parquet_shards(parquet_files(spec.name), column, request.rows_per_shard, request.limit)
    cells = (row[column] for row in source.select_columns([column]).cast_column(column, datasets.Image(decode=False)))
    if request.limit is not None:
        cells = itertools.islice(cells, request.limit)
    return (ShardRows(index, given=tuple(chunk)) for index, chunk in enumerate(_chunks(cells, request.rows_per_shard)))


def _parquet_shards(files: list[str], column: str, rows_per_shard: int, limit: int | None) -> Iterator[ShardRows]:
    spans, first = [], 0  # each file's rows in the whole source's numbering
    for path in files:
        rows = pq.ParquetFile(path).metadata.num_rows
        spans.append((path, first, first + rows))
        first += rows
    total = first if limit is None else min(first, limit)
    for index, start in enumerate(range(0, total, rows_per_shard)):
        stop = min(start + rows_per_shard, total)
        pieces = tuple(ParquetPiece(path, max(start, lo) - lo, min(stop, hi) - lo) for path, lo, hi in spans if lo < stop and start < hi)
        yield ShardRows(index, column, pieces)


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
        if difference := first_difference(found.settings(), wanted.settings()):
            raise DataSpecError(_another_preparation(to, found, *difference))
        for stale in to.glob("*.tmp.npy"):  # left by a kill mid-write (atomic_write's temporary name)
            stale.unlink()
        return found
    check_new_folder("--to", to, "choose an empty folder, or a preparation's own to continue it")
    with written("--to", to):
        to.mkdir(parents=True, exist_ok=True)
    wanted.write(to)  # from here on the folder is this preparation's, even if killed before its first shard
    return wanted


def _another_preparation(to: Path, found: Manifest, flag: str, theirs: object, mine: object) -> str:
    if flag == "SOURCE":
        return f"--to {to}: it holds a preparation of {theirs}, not of {mine}; choose an empty folder"
    return (f"--to {to}: it holds a preparation of {found.source} made with {flag} {shown(theirs)}, where this command gives"
            f" {flag} {shown(mine)}; rerun with {flag} {shown(theirs)} to continue it, or choose an empty folder")


def _chunks(cells: Iterable[dict], size: int) -> Iterator[list[dict]]:
    iterator = iter(cells)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
