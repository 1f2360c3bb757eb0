"""Materialise a streamed dataset as local parquet shards, for compute nodes without internet.

    python -m train.data download hf:mattymchen/celeba-hq --to /scratch/celeba-hq
    python train/wgangp.py --data 'parquet:/scratch/celeba-hq/*.parquet'

Rows keep every column and the images their original encoded bytes (no re-encoding); the Image
feature is kept in the parquet metadata, so `parquet:` reads the shards like the hub dataset.
"""
from pathlib import Path

import datasets

from train.common.atomic import atomic_write
from train.common.writable import check_new_folder, written
from train.data.specs import DataSpecError, parse_data_spec
from train.data.streaming import image_column_of, load_source


def download(spec_text: str, to: Path, split: str = "train", rows_per_shard: int = 1000,
             image_column: str | None = None, limit: int | None = None) -> list[Path]:
    spec = parse_data_spec(spec_text)
    if not spec.is_streamed:
        raise DataSpecError(f"{spec_text}: only hf:, parquet: and image-folder sources can be downloaded")
    to = Path(to)
    check_new_folder("--to", to)
    with written("--to", to):
        to.mkdir(parents=True, exist_ok=True)
    source = load_source(spec, split)
    column = image_column_of(source, spec, image_column)
    features = source.features
    source = source.cast_column(column, datasets.Image(decode=False))
    shards, rows = [], []

    def flush() -> None:
        path = to / f"{split}-{len(shards):05d}.parquet"
        table = datasets.Dataset.from_list(rows, features=features)
        atomic_write(path, lambda tmp: table.to_parquet(str(tmp)))
        shards.append(path)
        rows.clear()

    for count, row in enumerate(source):
        if limit is not None and count >= limit:
            break
        rows.append(row)
        if len(rows) == rows_per_shard:
            flush()
    if rows:
        flush()
    return shards
