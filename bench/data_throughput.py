"""Decoded images per second from local parquet shards of 1024x1024 JPEGs.

    python bench/data_throughput.py [--images 96] [--rows 960] [--timed 192] [--repeats 3] [--workers 1 2]
                                    [--rows-from-memory] [--no-flips] [--pin] [--prepared 64 256]

Rows: output resolution. Columns: one decoding core in a plain loop (decode_image over the JPEG
bytes in memory, no DataLoader), then the training pipeline (StreamingImages: datasets streaming +
StatefulDataLoader workers decoding into reused shared memory, train/data/batch_slots.py) per
process and per worker, and per worker as a fraction of the loop. `--rows` tiles the JPEGs into
larger parquet files: the pipeline then also pays for reading files of a realistic size.
Loop and pipelines are timed in turns, `--repeats` times: each cell is the median, the range
follows in brackets, and each ratio pairs a pipeline with the loop timed just before it, so load
from other processes on the machine moves both (and no timing overlaps a pipeline's prefetching,
see `Pipeline`). Both are timed once warm (`--warmup` images): for its first few hundred images a
freshly forked worker pays copy-on-write faults on its parent's heap (once per run), and so does
the parent's loop after the fork. The shards are drawn here (smooth random colour fields with
detail), never downloaded.

Under it, the CPU time an image took over the same timings: the loop's, the workers' and the
rank's, and loop / workers, how much of a worker's time goes where the loop's does (steadier
within a run than the rates: time another virtual machine held the core is not counted).
`--rows-from-memory` and `--no-flips` take away what the loop does not do, reading the rows and
flipping half the images, to show what each costs.

The prepared table (`--prepared`): images per second per process delivered from prepared shards
(`--data prepared:DIR`) as training reads them (open_stream: train/data/prepared_stream.py), flips on, against
the decode loop above and against a copy-only loop (np.frombuffer + stack into a pinned batch, the
least any reader of raw pixels does): the shards are made from the same JPEGs, tiled to
`--prepared-images`.
"""
import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from train.common.cores import usable_cores
from train.data import DataOptions, open_stream, parse_data_spec
from train.data.decode import decode_image
from train.data.prepared import Manifest, Preprocessing, ShardRecord, file_crc32, shard_name
from train.run.threads import choose_threads


def face_sized_jpeg(rng: np.random.Generator, size: int = 1024) -> bytes:
    coarse = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    detail = rng.normal(0, 6, (size, size, 3))  # about the size of CelebA-HQ JPEGs
    image = Image.fromarray(np.clip(np.asarray(coarse, dtype=float) + detail, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def drawn_jpegs(images: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [face_sized_jpeg(rng) for _ in range(images)]


def write_shards(folder: Path, images: int, shards: int = 2, distinct: int | None = None) -> tuple[str, list[bytes]]:
    """`images` rows in `shards` parquet files, as `datasets` writes them, tiling `distinct` drawn
    JPEGs (all distinct by default); returns the files' glob and the drawn JPEGs."""
    import datasets  # here, not at the top: the prepared table runs without it (a GPU machine may lack it)

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    blobs = drawn_jpegs(min(images, distinct or images))
    for shard, ids in enumerate(np.array_split(np.arange(images), shards)):
        rows = [{"image": {"bytes": blobs[i % len(blobs)], "path": None}, "label": int(i)} for i in ids]
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(folder / f"train-{shard:05d}.parquet"))
    return str(folder / "*.parquet"), blobs


def loop_rate(blobs: list[bytes], resolution: int, images: int, cpu: list[float] | None = None) -> float:
    """Images/s of decode_image in this process; appends the CPU seconds an image took to `cpu`."""
    start, used = time.perf_counter(), time.process_time()
    for i in range(images):
        decode_image(blobs[i % len(blobs)], resolution)
    if cpu is not None:
        cpu.append((time.process_time() - used) / images)
    return images / (time.perf_counter() - start)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()  # every thread's: a worker's queue feeder pickles what it sends
    return times.user + times.system


class RowsInMemory:
    """A worker's rows from the JPEGs in memory instead of `datasets` (--rows-from-memory): what
    the pipeline costs beyond the loop once reading costs nothing."""

    def __init__(self, blobs: list[bytes], column: str):
        self.blobs, self.column = blobs, column

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return ({self.column: {"bytes": blob, "path": None}} for blob in self.blobs)

    def state_dict(self) -> dict:
        return {}


class Pipeline:
    """One StreamingImages, warmed up, timed over as many windows as asked for. Between windows its
    workers fill their prefetch queues; those batches are taken before the clock starts, and the
    workers are left to refill before anything else is timed, so no window gets work done in
    another's time. The process computes with the intra-op threads a trainer with these workers
    takes (train/run/threads.py), whose spare threads would otherwise spin on the workers' cores."""

    def __init__(self, glob: str, resolution: int, workers: int, warmup: int, batch: int, pin: bool = False,
                 hflip: bool = True, rows_from: list[bytes] | None = None):
        self.threads = choose_threads(usable_cores(), 1, workers).threads
        options = DataOptions(parse_data_spec(f"parquet:{glob}"), resolution, workers=workers, shuffle_buffer=16, hflip=hflip)
        with contextlib.redirect_stdout(io.StringIO()):  # its log line names a temporary folder
            self.stream = open_stream(options, batch_size=batch, seed=0, rank=0, world_size=1, pin_memory=pin)
        if rows_from is not None:  # before the workers start, at the first batch: they take it with them
            decoding = self.stream.loader.dataset
            decoding.source = RowsInMemory(rows_from, decoding.column)
        self.batch, self.workers = batch, workers
        self.prefetched = workers * self.stream.loader.prefetch_factor
        self.rate(warmup)

    def rate(self, images: int) -> float:
        """Images/s over `images`; sets `worker_cpu` and `rank_cpu`, the CPU seconds an image took
        the workers and this process."""
        torch.set_num_threads(self.threads)
        for _ in range(self.prefetched):
            next(self.stream)
        workers = [psutil.Process(worker.pid) for worker in self.stream.loader._iterator._workers]
        worker_cpu, rank_cpu = sum(map(cpu_seconds, workers)), time.process_time()
        batches = max(1, images // self.batch)
        start = time.perf_counter()
        for _ in range(batches):
            next(self.stream)
        rate = batches * self.batch / (time.perf_counter() - start)
        rank_cpu = time.process_time() - rank_cpu
        time.sleep(2 * self.prefetched * self.batch / rate)
        self.rank_cpu = rank_cpu / (batches * self.batch)
        # from the first batch drained to the prefetch refilled: the timed batches and the refill
        self.worker_cpu = (sum(map(cpu_seconds, workers)) - worker_cpu) / ((batches + self.prefetched) * self.batch)
        return rate


def write_prepared(folder: Path, blobs: list[bytes], resolution: int, images: int, per_shard: int = 1024) -> list[bytes]:
    """A prepared folder of `images` rows, the JPEGs' pixels tiled; returns the rows as raw bytes."""
    decoded = np.stack([decode_image(blob, resolution).numpy() for blob in blobs])
    pixels = decoded[np.arange(images) % len(decoded)]
    manifest = Manifest("bench", "train", "image", Preprocessing(resolution), per_shard, complete=True)
    for index, start in enumerate(range(0, images, per_shard)):
        path = folder / shard_name(index)
        np.save(path, pixels[start : start + per_shard])
        rows = len(pixels[start : start + per_shard])
        manifest.shards.append(ShardRecord(index, path.name, rows, rows, 0, file_crc32(path)))
    manifest.write(folder)
    return [row.tobytes() for row in pixels]


def copy_rate(rows: list[bytes], resolution: int, batch: int, images: int) -> float:
    """np.frombuffer + stack into a (pinned, where there is a GPU) batch: the floor of any raw-pixel reader."""
    out = torch.empty((batch, 3, resolution, resolution), dtype=torch.uint8, pin_memory=torch.cuda.is_available())
    flat = out.numpy().reshape(batch, -1)
    start = time.perf_counter()
    for first in range(0, images, batch):
        np.stack([np.frombuffer(rows[(first + i) % len(rows)], np.uint8) for i in range(batch)], out=flat)
    return images // batch * batch / (time.perf_counter() - start)


def prepared_rate(stream, batch: int, images: int) -> float:
    start = time.perf_counter()
    for _ in range(images // batch):
        next(stream)
    return images // batch * batch / (time.perf_counter() - start)


def prepared_table(blobs: list[bytes], args: argparse.Namespace) -> list[str]:
    lines = [f"prepared shards: {args.prepared_images} images, batch {args.prepared_batch}, flips on, workers 0 (in the"
             f" process); {args.repeats} timings of {args.prepared_timed} images a cell: median (min-max)",
             "| output | prepared, per process | copy-only loop | prepared / copy-only | decode loop | prepared / decode |",
             "|---|---|---|---|---|---|"]
    for resolution in args.prepared:
        with tempfile.TemporaryDirectory() as tmp:
            rows = write_prepared(Path(tmp), blobs, resolution, args.prepared_images)
            options = DataOptions(parse_data_spec(f"prepared:{tmp}"), resolution)
            with contextlib.redirect_stdout(io.StringIO()):  # its log line names a temporary folder
                stream = open_stream(options, batch_size=args.prepared_batch, seed=0, rank=0, world_size=1,
                                     pin_memory=torch.cuda.is_available())  # as a GPU run reads them
            prepared_rate(stream, args.prepared_batch, args.prepared_timed)  # warm: shards mapped, pages cached
            prepared, copied, decoded = [], [], []
            for _ in range(args.repeats):
                prepared.append(prepared_rate(stream, args.prepared_batch, args.prepared_timed))
                copied.append(copy_rate(rows, resolution, args.prepared_batch, args.prepared_timed))
                decoded.append(loop_rate(blobs, resolution, max(16, args.timed // 4)))
            stream.close()
        of_copy = [p / c for p, c in zip(prepared, copied)]
        of_decode = [p / d for p, d in zip(prepared, decoded)]
        lines.append(f"| {resolution} | {spread(prepared, '.0f')} img/s | {spread(copied, '.0f')} img/s | {spread(of_copy, '.2f')}"
                     f" | {spread(decoded, '.0f')} img/s | {spread(of_decode, '.0f')}x |")
    return lines


def spread(values: list[float], form: str) -> str:
    median = format(statistics.median(values), form)
    return median if len(values) == 1 else f"{median} ({format(min(values), form)}-{format(max(values), form)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96, help="JPEGs drawn")
    parser.add_argument("--rows", type=int, default=None,
                        help="rows in the shards, tiling the JPEGs (default: one each); CelebA-HQ's files hold thousands")
    parser.add_argument("--timed", type=int, default=192, help="images decoded per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings per cell, taken in turns")
    parser.add_argument("--warmup", type=int, default=384, help="images a pipeline yields before it is timed")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pin", action="store_true", help="batches pinned as a CUDA run's are (the loader's pinning thread copies them)")
    parser.add_argument("--no-flips", action="store_true", help="no random horizontal flips (training flips half the images)")
    parser.add_argument("--rows-from-memory", action="store_true",
                        help="the workers take the JPEGs from memory, as the loop does, instead of reading them through datasets")
    parser.add_argument("--resolutions", type=int, nargs="*", default=[64, 256, 1024], help="resolutions of the decode table (none: no table)")
    parser.add_argument("--prepared", type=int, nargs="*", default=[64, 256], help="resolutions of the prepared table (none: no table)")
    parser.add_argument("--prepared-images", type=int, default=4096)
    parser.add_argument("--prepared-timed", type=int, default=8192, help="images per timing of a prepared stream")
    parser.add_argument("--prepared-batch", type=int, default=64)
    args = parser.parse_args()
    if min(args.workers) < 1:
        parser.error(f"--workers {' '.join(map(str, args.workers))}: the table compares decoding workers with the loop; each count must be 1 or more")
    if args.pin and not torch.cuda.is_available():
        parser.error("--pin: nothing is pinned without CUDA (the loader would hand the slots over unpinned); drop the flag")
    if args.resolutions:
        decode_table(args)
    if args.prepared:
        print("\n".join(prepared_table(drawn_jpegs(args.images), args)))


def decode_table(args: argparse.Namespace) -> None:
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        glob, blobs = write_shards(Path(tmp), args.rows or args.images, shards=max(args.workers), distinct=args.images)
        rows, cpu_rows = [], []
        for resolution in args.resolutions:
            pipelines = [Pipeline(glob, resolution, w, args.warmup, args.batch, args.pin, not args.no_flips,
                                  blobs if args.rows_from_memory else None) for w in args.workers]
            try:
                row, cpu_row = timed_in_turns(pipelines, blobs, resolution, args)
            finally:
                for pipeline in pipelines:
                    pipeline.stream.close()
            rows.append(row)
            cpu_rows.append(cpu_row)
        print(f"{args.images} JPEGs of 1024x1024 in {args.rows or args.images} rows of {max(args.workers)} parquet files"
              f"{', batches pinned' if args.pin else ''}{', no flips' if args.no_flips else ''}"
              f"{', the workers taking the JPEGs from memory' if args.rows_from_memory else ''},"
              f" {np.mean([len(b) for b in blobs]) / 1e3:.0f} kB each on average;"
              f" {args.timed} images a timing, {args.repeats} timings a cell: median (min-max)")
        print_table(["output", "1 core, plain decode loop"], ["per process / per worker", "per worker / loop"], args.workers, rows)
        print("\nCPU time an image, the same timings (the workers' includes reading the rows, the rank's receiving the batches):")
        print_table(["output", "plain decode loop"], ["workers / rank", "loop / workers"], args.workers, cpu_rows)
        print()


def timed_in_turns(pipelines: list[Pipeline], blobs: list[bytes], resolution: int, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The loop and each pipeline timed in turns: the rates' row of cells and the CPU times' row."""
    loop_rate(blobs, resolution, args.warmup)  # after the forks: the parent's heap is copy-on-write too
    loop, loop_cpu = [], []
    rates, worker_cpu, rank_cpu = ([[] for _ in pipelines] for _ in range(3))
    for _ in range(args.repeats):
        loop.append(loop_rate(blobs, resolution, args.timed, loop_cpu))
        for pipeline, rate, worker, rank in zip(pipelines, rates, worker_cpu, rank_cpu):
            rate.append(pipeline.rate(args.timed))
            worker.append(pipeline.worker_cpu)
            rank.append(pipeline.rank_cpu)
    row, cpu_row = [f"{resolution}", f"{spread(loop, '.0f')} img/s"], [f"{resolution}", f"{spread(ms(loop_cpu), '.2f')} ms"]
    for pipeline, rate, worker, rank in zip(pipelines, rates, worker_cpu, rank_cpu):
        per_worker = [r / pipeline.workers for r in rate]
        # each ratio pairs a timing with the loop's just before it
        row += [f"{spread(rate, '.0f')} / {spread(per_worker, '.0f')} img/s", spread([r / base for r, base in zip(per_worker, loop)], ".2f")]
        # a timing of a few images can round to no clock tick of the workers' CPU: no ratio then
        shares = [base / w if w else float("nan") for w, base in zip(worker, loop_cpu)]
        cpu_row += [f"{spread(ms(worker), '.2f')} / {spread(ms(rank), '.2f')} ms", spread(shares, ".2f")]
        # the bench drops each batch at once, so its workers should always find a free slot
        if made_new := pipeline.stream.batches_in_new_memory:
            print(f"{resolution} px, {pipeline.workers} workers: {made_new} batches in new shared memory (no free slot)")
    return row, cpu_row


def ms(seconds: list[float]) -> list[float]:
    return [s * 1e3 for s in seconds]


def print_table(first: list[str], per_pipeline: list[str], workers: list[int], rows: list[list[str]]) -> None:
    header = list(first)
    for w in workers:
        header += [f"{w} worker{'s' if w > 1 else ''}: {per_pipeline[0]}", *per_pipeline[1:]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
