"""How long a trainer fed from prepared shards waits for its data: `data_wait_frac` from its metrics.

    python bench/data_wait.py                          # 64-px DCGAN, debug-sized, 3 runs of 200 steps
    python bench/data_wait.py --trainer train/wgangp.py
    python bench/data_wait.py --runs 1 -- --batch-size 64 --channel-max 512   # flags after -- go to the trainer

Draws --images JPEGs (bench/data_throughput.py's faces, never downloaded) into an image folder,
prepares them once with `python -m train.data prepare` at --resolution, then trains
`train/dcgan.py --data prepared:DIR` (or --trainer) --runs times, each its own process, and reads every logging
window of its metrics.jsonl. `data_wait_frac` is the share of a window's step time spent waiting
for the next batch (train/run/report.py); the issue's goal is under 0.02. Prints one row a run:
the median window and the largest, and the median images per second.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.data_throughput import face_sized_jpeg
from train.report.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def draw_folder(folder: Path, images: int, size: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        (folder / f"{i:05d}.jpg").write_bytes(face_sized_jpeg(rng, size))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="drawn JPEGs prepared")
    parser.add_argument("--source-size", type=int, default=256, help="the drawn JPEGs' side in pixels")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-debug", dest="debug", action="store_false", help="the trainer's own sizes, not --debug's")
    parser.add_argument("--trainer", default="train/dcgan.py", help="the training script, from the repository root")
    parser.add_argument("trainer_args", nargs="*", help="after --: more flags for the trainer")
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        images, prepared = Path(tmp) / "images", Path(tmp) / "prepared"
        draw_folder(images, args.images, args.source_size)
        made = subprocess.run([sys.executable, "-m", "train.data", "prepare", str(images), "--resolution", str(args.resolution),
                               "--to", str(prepared)], cwd=ROOT, env=env, capture_output=True, text=True)
        if made.returncode != 0:
            print(f"error: prepare failed: {made.stderr.strip()[-2000:]}", file=sys.stderr)
            return 1
        command = [sys.executable, args.trainer, *(["--debug"] if args.debug else []), "--data", f"prepared:{prepared}",
                   "--resolution", str(args.resolution), "--max-steps", str(args.steps), "--log-every", str(args.log_every),
                   "--sample-every", "1000000", "--ckpt-every", "1000000", "--wandb-mode", "disabled", *args.trainer_args]
        shown = " ".join(command[1:]).replace(str(prepared), "DIR")
        print(f"trainer: {shown} (DIR: {args.images} drawn images prepared at {args.resolution} px)\n")
        print("| run | windows | data_wait_frac, median window | largest window | img/s, median window |")
        print("|---|---|---|---|---|")
        for run in range(args.runs):
            out = Path(tmp) / f"run-{run}"
            result = subprocess.run([*command, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                print(f"| {run + 1} | failed: {(result.stderr.strip().splitlines() or ['no output'])[-1][:200]} | | | |")
                continue
            rows = [row for row in read_metrics(out / "metrics.jsonl") if "data_wait_frac" in row]
            waits = [row["data_wait_frac"] for row in rows]
            rates = [row["img_per_s"] for row in rows if "img_per_s" in row]
            print(f"| {run + 1} | {len(rows)} | {statistics.median(waits):.4f} | {max(waits):.4f} | "
                  f"{statistics.median(rates):,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
