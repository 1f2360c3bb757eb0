"""Decoded images per second from local parquet shards of 1024x1024 JPEGs.

    python bench/data_throughput.py [--images 96] [--workers 1 2]

Rows: output resolution. Columns: one decoding core in a plain loop (no DataLoader), then the
training pipeline (StreamingImages: datasets streaming + StatefulDataLoader workers) per process
and per worker. The shards are drawn here (smooth random colour fields with detail), never downloaded.
"""
import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

if __spec__ is None:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import datasets  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from train.data import DataOptions, open_stream, parse_data_spec  # noqa: E402
from train.data.decode import decode_image  # noqa: E402

FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})


def face_sized_jpeg(rng: np.random.Generator, size: int = 1024) -> bytes:
    coarse = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    detail = rng.normal(0, 6, (size, size, 3))  # about the size of CelebA-HQ JPEGs
    image = Image.fromarray(np.clip(np.asarray(coarse, dtype=float) + detail, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shards(folder: Path, images: int, shards: int = 2) -> tuple[str, list[bytes]]:
    rng = np.random.default_rng(0)
    blobs = [face_sized_jpeg(rng) for _ in range(images)]
    for shard, ids in enumerate(np.array_split(np.arange(images), shards)):
        rows = [{"image": {"bytes": blobs[i], "path": None}, "label": int(i)} for i in ids]
        datasets.Dataset.from_list(rows, features=FEATURES).to_parquet(str(folder / f"train-{shard:05d}.parquet"))
    return str(folder / "*.parquet"), blobs


def loop_rate(blobs: list[bytes], resolution: int) -> float:
    start = time.perf_counter()
    for blob in blobs:
        decode_image(blob, resolution)
    return len(blobs) / (time.perf_counter() - start)


def pipeline_rate(glob: str, resolution: int, workers: int, images: int, batch: int = 8) -> float:
    options = DataOptions(parse_data_spec(f"parquet:{glob}"), resolution, workers=workers, shuffle_buffer=16)
    stream = open_stream(options, batch_size=batch, seed=0, rank=0, world_size=1)
    next(stream)  # workers started, buffers filled
    batches = max(1, images // batch)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256, 1024])
    args = parser.parse_args()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        glob, blobs = write_shards(Path(tmp), args.images, shards=max(args.workers))
        print(f"{args.images} JPEGs of 1024x1024, {np.mean([len(b) for b in blobs]) / 1e3:.0f} kB each on average")
        header = ["output", "1 core, loop"] + [f"{w} worker{'s' if w > 1 else ''}: per process / per worker" for w in args.workers]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for resolution in args.resolutions:
            cells = [f"{resolution}", f"{loop_rate(blobs, resolution):.0f} img/s"]
            for workers in args.workers:
                rate = pipeline_rate(glob, resolution, workers, args.images)
                cells.append(f"{rate:.0f} / {rate / workers:.0f} img/s")
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
