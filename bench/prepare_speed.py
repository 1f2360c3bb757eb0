"""The first pass of `prepare`, in images per second per decoding process, against a plain decode loop.

    python bench/prepare_speed.py [--images 1920] [--rows-per-shard 480] [--resolutions 64 256 1024] [--workers 0 2] [--repeats 3]

The same 1024x1024 JPEGs as bench/data_throughput.py (drawn, never downloaded) in local parquet
shards. The loop runs `decode_image` over the JPEG bytes in memory on one core; `prepare` reads the
shards, decodes every row through the same `decode_image` and writes the .npy shards and the
manifest (train/data/prepare.py), into a new folder each time (removed after its timing), so every
timing is a first pass. `--workers 0` decodes in the prepare process itself; N > 0 over N
processes, and the rate is then divided by N (per worker).

The loop writes nothing, while `prepare` writes every image's raw pixels (3 MB at 1024 px). So each
timing also writes as many bytes from one reused buffer into a new file (removed after it), to
measure what this machine's page cache takes new data at: on a VM whose balloon reports free memory
to the host, pages never used, or freed a few seconds ago, come back through the hypervisor and
cost far more than a copy. "loop + writing" is the rate the loop would have if it also wrote its
pixels at that speed: the ceiling for any program that decodes and then writes, on one core.

Write, loop and prepare are timed in turns, `--repeats` times: each cell is the median, the range
follows in brackets, and each ratio pairs a prepare timing with the loop and write timed just
before it, so load from other processes moves them together.
"""
import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

WRITE_CHUNK = 16 << 20  # the reused buffer the page-cache timing writes from


def prepare_rate(source: str, to: Path, resolution: int, workers: int, images: int, rows_per_shard: int) -> float:
    from train.data.prepare import PrepareRequest, prepare
    from train.data.prepared import Preprocessing

    request = PrepareRequest(source=f"parquet:{source}", to=to, preprocessing=Preprocessing(resolution), rows_per_shard=rows_per_shard,
                             workers=workers, progress=False)
    start = time.perf_counter()
    result = prepare(request)
    elapsed = time.perf_counter() - start
    assert sum(shard.images for shard in result.manifest.shards) == images, "every row prepared"
    shutil.rmtree(to)
    return images / elapsed / max(1, workers)


def page_cache_rate(path: Path, size: int) -> float:
    """Bytes per second a new file of `size` bytes takes, written from one reused buffer (no fsync:
    prepare's shards are not synced either)."""
    chunk = np.ones(min(size, WRITE_CHUNK), np.uint8)  # touched once here, before the clock
    start = time.perf_counter()
    with open(path, "wb") as f:
        for offset in range(0, size, len(chunk)):
            f.write(chunk[: size - offset].data)
    elapsed = time.perf_counter() - start
    os.unlink(path)
    return size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1920, help="JPEGs in the shards (one first pass each timing)")
    parser.add_argument("--rows-per-shard", type=int, default=480,
                        help="prepare's shards: at least a parquet row group (430 rows here, as datasets writes them), as in a real preparation")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="0: in the prepare process")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # Imported here, not at the top: multiprocessing runs this script again in every decoding process
    # (as __mp_main__), and torch and datasets there would add 2 s to each one's start, which
    # `python -m train.data prepare` (its main module imports neither) does not pay.
    from bench.data_throughput import loop_rate, spread, write_shards

    if min(args.images, args.repeats, args.rows_per_shard) < 1 or min(args.workers) < 0:
        parser.error("--images, --repeats and --rows-per-shard must be at least 1, --workers 0 or more")
    with tempfile.TemporaryDirectory() as tmp:
        source, blobs = write_shards(Path(tmp), args.images)
        loop_rate(blobs, 64, min(32, args.images))  # warm: the first decodes pay for imports and caches
        print(f"{args.images} JPEGs of 1024x1024, {args.rows_per_shard} rows a shard, {args.repeats} timings per cell, median (range)\n")
        print("| output | workers | page cache, new data | plain decode loop, 1 core | loop + writing | prepare, per decoding process"
              " | prepare / loop | prepare / (loop + writing) |")
        print("|---|---|---|---|---|---|---|---|")
        for resolution in args.resolutions:
            image_bytes = 3 * resolution**2
            for workers in args.workers:
                writes, loops, rates = [], [], []
                for repeat in range(args.repeats):
                    writes.append(page_cache_rate(Path(tmp) / "page-cache.bin", args.images * image_bytes))
                    loops.append(loop_rate(blobs, resolution, args.images))
                    rates.append(prepare_rate(source, Path(tmp) / "prepared", resolution, workers, args.images, args.rows_per_shard))
                bounds = [1 / (1 / loop + image_bytes / write) for loop, write in zip(loops, writes)]
                ratios = [rate / loop for rate, loop in zip(rates, loops)]
                bounded = [rate / bound for rate, bound in zip(rates, bounds)]
                print(f"| {resolution} | {workers or 'in-process'} | {spread([w / 1e6 for w in writes], ',.0f')} MB/s | {spread(loops, '.0f')} img/s"
                      f" | {spread(bounds, '.0f')} img/s | {spread(rates, '.0f')} img/s"
                      f" | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                      f" | {statistics.median(bounded):.2f} ({min(bounded):.2f}-{max(bounded):.2f}) |", flush=True)


if __name__ == "__main__":
    main()
