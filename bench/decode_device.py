"""Images per second decoded from 1024x1024 JPEGs: one CPU core's decode_image loop (what each
decoding worker does) against --decode-device's batches (decode_jpeg, then the crop and resize,
train/data/device_decode.py) on the GPU.

    python bench/decode_device.py [--resolutions 256 512 1024] [--batch 32] [--images 64]
    python bench/decode_device.py --device cpu     # the same path on the CPU: a check that it runs

Without CUDA (and without --device cpu) it says so and exits 0: there is nothing to measure.
Each cell is the median of --repeats timings taken in turns, the range in brackets; the GPU is
timed to the end of its work (synchronized) and warmed once per resolution (nvJPEG's handles).
The JPEGs are bench/data_throughput.py's drawn faces, never downloaded. The last column is how
far the batches' pixels land from decode_image's (tests/test_device_decode.py holds them to 16
levels at most and 1.5 on average on the CPU; tests/test_gpu.py on a GPU).
"""
import argparse
import statistics
import sys
import time

import numpy as np
import torch

from bench.data_throughput import face_sized_jpeg
from train.data.decode import decode_image
from train.data.device_decode import decode_batch, encoded_or_decoded


def loop_rate(blobs: list[bytes], resolution: int) -> float:
    start = time.perf_counter()
    for data in blobs:
        decode_image(data, resolution)
    return len(blobs) / (time.perf_counter() - start)


def batch_rate(encoded: list[torch.Tensor], resolution: int, batch: int, device: torch.device) -> float:
    """Batches of `batch` from bytes already read (the workers' part), decoded and resized on `device`."""
    start = time.perf_counter()
    for first in range(0, len(encoded), batch):
        decode_batch(encoded[first : first + batch], resolution, 0, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(encoded) / (time.perf_counter() - start)


def levels_apart(blobs: list[bytes], encoded: list[torch.Tensor], resolution: int, batch: int, device: torch.device) -> str:
    """Most and mean levels (0-255) between one batch decoded on `device` and decode_image's pixels."""
    decoded, _ = decode_batch(encoded[:batch], resolution, 0, device)
    reference = torch.stack([decode_image(data, resolution) for data in blobs[:batch]])
    difference = (decoded.cpu().int() - reference.int()).abs().float()
    return f"{int(difference.max())} / {float(difference.mean()):.2f}"


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--images", type=int, default=64, help="JPEGs decoded per timing")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure (python bench/decode_device.py --device cpu runs the path on the CPU)")
        return 0
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    blobs = [face_sized_jpeg(rng) for _ in range(args.images)]
    print(f"{args.images} JPEGs of 1024x1024, {np.mean([len(b) for b in blobs]) / 1e3:.0f} kB each; batches of"
          f" {args.batch} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'the CPU'};"
          f" img/s, median (min-max) of {args.repeats}")
    print("| output px | 1 CPU core, decode_image | decode_jpeg batches | ratio | levels from decode_image, most / mean |\n"
          "|---|---|---|---|---|")
    for resolution in args.resolutions:
        encoded = [encoded_or_decoded(data, resolution) for data in blobs]
        batch_rate(encoded[: args.batch], resolution, args.batch, device)  # warm-up
        loops, batches = [], []
        for _ in range(args.repeats):
            loops.append(loop_rate(blobs, resolution))
            batches.append(batch_rate(encoded, resolution, args.batch, device))
        ratio = statistics.median(batches) / statistics.median(loops)
        apart = levels_apart(blobs, encoded, resolution, args.batch, device)
        print(f"| {resolution} | {spread(loops)} | {spread(batches)} | {ratio:.1f}x | {apart} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
