"""The first pass of `prepare`, in images per second per decoding process, against a plain decode loop.

    python bench/prepare_speed.py [--images 1920] [--rows-per-shard 480] [--resolutions 64 256 1024] [--workers 0 2] [--repeats 3]

The same 1024x1024 JPEGs as bench/data_throughput.py (drawn, never downloaded) in local parquet
shards. The loop runs `decode_image` over the JPEG bytes in memory on one core; `prepare` reads the
shards, decodes every row through the same `decode_image` and writes the .npy shards and the
manifest (train/data/prepare.py), into a new folder each time, so every timing is a first pass.
`--workers 0` decodes in the prepare process itself (one core); N > 0 over N processes, and the
rate is then divided by N (per worker). Loop and prepare are timed in turns, `--repeats` times:
each cell is the median, the range follows in brackets, and each ratio pairs a prepare timing with
the loop timed just before it, so load from other processes moves both.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.data_throughput import loop_rate, spread, write_shards
from train.data.prepare import PrepareRequest, prepare
from train.data.prepared import Preprocessing


def prepare_rate(source: str, to: Path, resolution: int, workers: int, images: int, rows_per_shard: int) -> float:
    request = PrepareRequest(source=f"parquet:{source}", to=to, preprocessing=Preprocessing(resolution), rows_per_shard=rows_per_shard,
                             workers=workers, progress=False)
    start = time.perf_counter()
    result = prepare(request)
    elapsed = time.perf_counter() - start
    assert sum(shard.images for shard in result.manifest.shards) == images, "every row prepared"
    return images / elapsed / max(1, workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1920, help="JPEGs in the shards (one first pass each timing)")
    parser.add_argument("--rows-per-shard", type=int, default=480,
                        help="prepare's shards: at least a parquet row group (430 rows here, as datasets writes them), as in a real preparation")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="0: in the prepare process")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if min(args.images, args.repeats, args.rows_per_shard) < 1 or min(args.workers) < 0:
        parser.error("--images, --repeats and --rows-per-shard must be at least 1, --workers 0 or more")
    with tempfile.TemporaryDirectory() as tmp:
        source, blobs = write_shards(Path(tmp), args.images)
        loop_rate(blobs, 64, min(32, args.images))  # warm: the first decodes pay for imports and caches
        print(f"{args.images} JPEGs of 1024x1024, {args.rows_per_shard} rows a shard, {args.repeats} timings per cell, median (range)\n")
        print("| output | workers | plain decode loop, 1 core | prepare, per decoding process | prepare / loop |")
        print("|---|---|---|---|---|")
        for resolution in args.resolutions:
            for workers in args.workers:
                loops, rates = [], []
                for repeat in range(args.repeats):
                    loops.append(loop_rate(blobs, resolution, args.images))
                    to = Path(tmp) / f"prepared-{resolution}-{workers}-{repeat}"
                    rates.append(prepare_rate(source, to, resolution, workers, args.images, args.rows_per_shard))
                ratios = [rate / loop for rate, loop in zip(rates, loops)]
                print(f"| {resolution} | {workers or 'in-process'} | {spread(loops, '.0f')} img/s | {spread(rates, '.0f')} img/s"
                      f" | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |", flush=True)


if __name__ == "__main__":
    main()
