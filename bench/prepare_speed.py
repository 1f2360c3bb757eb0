"""The first pass of `prepare`, in images per second per decoding process, against a plain decode loop.

    python bench/prepare_speed.py [--images 1920] [--distinct N] [--rows-per-shard 480] [--resolutions 64 256 1024] [--workers 0 2] [--repeats 3]

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

With N > 1 workers, N decoding processes share the machine's cores, caches and memory, as N plain
loops side by side would: so the loop is also run in N processes at once, started together, each
over its own copy of the first SIDE_BY_SIDE_ROWS JPEGs, and "loops side by side" is their mean rate
per process (one loop alone runs with the other cores idle, taking the system's own work).

Write, loop(s) and prepare are timed in turns, `--repeats` times: each cell is the median, the range
follows in brackets, and each ratio pairs a prepare timing with the loop and write timed just
before it, so load from other processes moves them together.

A second table gives the CPU time an image took the loop and prepare's decoding processes (the
prepare process itself with `--workers 0`), over the same timings (`ProcessesUnder`): how much of
a decoding process's time goes where the loop's does, whatever else ran on the machine meanwhile
(time another virtual machine held a core, or a core left idle, is not counted).
"""
import argparse
import glob
import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

WRITE_CHUNK = 16 << 20  # the reused buffer the page-cache timing writes from
# JPEGs each side-by-side loop holds, cycled through as loop_rate cycles through its own: 220 MB,
# far beyond the caches as the whole set is, where every row would be 1.8 GB a loop at 7,680.
SIDE_BY_SIDE_ROWS = 960


def prepare_rate(source: str, to: Path, resolution: int, workers: int, images: int, rows_per_shard: int) -> tuple[float, float]:
    """Images/s per decoding process, and the CPU seconds an image took the decoding processes."""
    from train.data.prepare import PrepareRequest, prepare
    from train.data.prepared import Preprocessing

    request = PrepareRequest(source=f"parquet:{source}", to=to, preprocessing=Preprocessing(resolution), rows_per_shard=rows_per_shard,
                             workers=workers, progress=False)
    start, used = time.perf_counter(), time.process_time()
    with ProcessesUnder() as under:
        result = prepare(request)
    elapsed = time.perf_counter() - start
    assert sum(shard.images for shard in result.manifest.shards) == images, "every row prepared"
    shutil.rmtree(to)
    cpu = under.cpu_seconds() if workers else time.process_time() - used
    return images / elapsed / max(1, workers), cpu / images


class ProcessesUnder:
    """The CPU seconds of the processes this process's children started and reaped while it ran:
    prepare's decoding processes, forked by its forkserver, which reaps each one as it ends (the
    kernel then adds its time to the forkserver's children's times). Exact to the kernel's clock
    tick, and nothing samples: a sampling thread here took 7% of two cores from the workers it measured."""

    def __enter__(self) -> "ProcessesUnder":
        self.before = self._reaped()
        return self

    def __exit__(self, *exc) -> None:
        self.after = self._reaped()

    def cpu_seconds(self) -> float:
        return sum(seconds - self.before.get(pid, 0.0) for pid, seconds in self.after.items())

    @staticmethod
    def _reaped() -> dict[int, float]:
        import psutil

        reaped = {}
        for child in psutil.Process().children():
            try:
                times = child.cpu_times()
            except psutil.Error:  # ended since it was listed
                continue
            reaped[child.pid] = times.children_user + times.children_system
        return reaped


def side_by_side_rate(source: str, resolution: int, processes: int, images: int) -> float:
    """Images per second per process of `processes` plain decode loops run at once, each over its own
    copy of the source's first JPEGs (read before the clock). Spawned: this process holds torch's
    and Arrow's threads, and a forkserver started here would be the one `prepare`'s workers then
    come from, without the modules `prepare` has it preload (0.15-0.2 s more per worker start)."""
    context = multiprocessing.get_context("spawn")
    start, rates = context.Barrier(processes + 1), context.SimpleQueue()
    loops = [context.Process(target=_timed_loop, args=(source, resolution, images, start, rates)) for _ in range(processes)]
    for loop in loops:
        loop.start()
    start.wait(timeout=600)  # every loop has read its bytes: the clocks start together
    per_process = [rates.get() for _ in loops]
    for loop in loops:
        loop.join()
        assert loop.exitcode == 0, f"a side-by-side loop exited with {loop.exitcode}"
    return statistics.mean(per_process)


def _timed_loop(source: str, resolution: int, images: int, start, rates) -> None:
    import pyarrow.parquet as pq

    from bench.data_throughput import loop_rate  # the one loop's own code; its imports (torch) before the clock
    from train.common.freed_memory import keep_freed_memory

    # A new process's malloc gives freed image buffers back and faults in fresh pages for the next
    # (train/common/freed_memory.py): 2.2x the CPU an image at 1024 px. The one loop runs in this
    # process, whose thresholds its own history raised: so must these, to be the same loop.
    keep_freed_memory()

    blobs = []
    for path in sorted(glob.glob(source)):
        if len(blobs) < SIDE_BY_SIDE_ROWS:
            cells = pq.read_table(path, columns=["image"]).column("image").combine_chunks()
            blobs += cells.field("bytes").slice(0, SIDE_BY_SIDE_ROWS - len(blobs)).to_pylist()
    loop_rate(blobs, resolution, min(32, len(blobs)))  # warm, as the one loop is
    start.wait(timeout=600)
    rates.put(loop_rate(blobs, resolution, images))


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


def ratio_spread(rates: list[float], bases: list[float]) -> str:
    """Each timing over the base timed just before it: the median, then the range."""
    from bench.data_throughput import spread

    return spread([rate / base for rate, base in zip(rates, bases)], ".2f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1920, help="JPEGs in the shards (one first pass each timing)")
    parser.add_argument("--distinct", type=int, default=None,
                        help="JPEGs drawn, tiled to --images (default: all distinct): CelebA-HQ's 30,000 rows without drawing 30,000")
    parser.add_argument("--rows-per-shard", type=int, default=480,
                        help="prepare's shards: at least a parquet row group (430 rows here, as datasets writes them), as in a real preparation")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="0: in the prepare process")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # Imported here, not at the top: multiprocessing runs this script again in every decoding process
    # (as __mp_main__), and torch and datasets there would add 2 s to each one's start, which
    # `python -m train.data prepare` (its main module imports neither) does not pay.
    from bench.data_throughput import loop_rate, ms, spread, write_shards

    if min(args.images, args.repeats, args.rows_per_shard) < 1 or (args.distinct is not None and args.distinct < 1) or min(args.workers) < 0:
        parser.error("--images, --distinct, --repeats and --rows-per-shard must be at least 1, --workers 0 or more")
    with tempfile.TemporaryDirectory() as tmp:
        # files of at most 4,000 rows (930 MB): datasets holds a file's table in memory to write it
        source, blobs = write_shards(Path(tmp), args.images, shards=max(2, math.ceil(args.images / 4000)), distinct=args.distinct)
        loop_rate(blobs, 64, min(32, args.images))  # warm: the first decodes pay for imports and caches
        print(f"{args.images} JPEGs of 1024x1024 ({len(blobs)} distinct, tiled; the loops cycle through them), {args.rows_per_shard} rows a shard,"
              f" {args.repeats} timings per cell, median (range)\n")
        print("| output | workers | page cache, new data | plain decode loop, 1 core | loops side by side, per process | loop + writing"
              " | prepare, per decoding process | prepare / loop | prepare / loops side by side | prepare / (loop + writing) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        cpu_rows = []
        for resolution in args.resolutions:
            image_bytes = 3 * resolution**2
            for workers in args.workers:
                writes, loops, beside, rates, loop_cpu, prepare_cpu = [], [], [], [], [], []
                for repeat in range(args.repeats):
                    writes.append(page_cache_rate(Path(tmp) / "page-cache.bin", args.images * image_bytes))
                    loops.append(loop_rate(blobs, resolution, args.images, loop_cpu))
                    if workers > 1:
                        beside.append(side_by_side_rate(source, resolution, workers, args.images))
                    rate, cpu = prepare_rate(source, Path(tmp) / "prepared", resolution, workers, args.images, args.rows_per_shard)
                    rates.append(rate)
                    prepare_cpu.append(cpu)
                bounds = [1 / (1 / loop + image_bytes / write) for loop, write in zip(loops, writes)]
                print(f"| {resolution} | {workers or 'in-process'} | {spread([w / 1e6 for w in writes], ',.0f')} MB/s | {spread(loops, '.0f')} img/s"
                      f" | {spread(beside, '.0f') + ' img/s' if beside else '-'} | {spread(bounds, '.0f')} img/s | {spread(rates, '.0f')} img/s"
                      f" | {ratio_spread(rates, loops)} | {ratio_spread(rates, beside) if beside else '-'} | {ratio_spread(rates, bounds)} |", flush=True)
                cpu_rows.append(f"| {resolution} | {workers or 'in-process'} | {spread(ms(loop_cpu), '.2f')} ms"
                                f" | {spread(ms(prepare_cpu), '.2f')} ms | {ratio_spread(loop_cpu, prepare_cpu)} |")
        print("\nCPU time an image, the same timings (prepare's includes reading the rows, writing the pixels and starting its processes):")
        print("| output | workers | plain decode loop | prepare's decoding processes | loop / prepare |")
        print("|---|---|---|---|---|")
        print("\n".join(cpu_rows))



if __name__ == "__main__":
    main()
