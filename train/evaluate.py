"""FID and KID of a finished run's EMA generator, against real images of its data source.

    python train/evaluate.py --run DIR [--checkpoint CKPT] [--fid-samples N] [--fid-weights PATH]
    accelerate launch train/evaluate.py --run DIR ...      # feature extraction shared by every process

Prints one JSON line {"step", "fid", "kid_mean", "kid_std", "samples"} (and writes it to --output).
The real statistics are cached in --fid-cache and shared with training runs on the same data.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

from train.data import DataError, DataSpecError
from train.report.fid import (
    FIDEvaluator,
    FIDNotApplicable,
    FIDUnavailable,
    default_cache_dir,
)
from train.run.checkpoint import checkpoint_step
from train.run.finished import FinishedRun, RunNotFound
from train.run.multi_cpu import relaunch_on_cpu_processes
from train.run.outcome import BAD_INPUT


def evaluate(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator

    run = FinishedRun(args.run)
    generator, checkpoint = run.ema_generator(args.checkpoint)
    # Evaluation needs neither mixed precision nor DDP: only the process group, on the CPU without CUDA.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    evaluator = FIDEvaluator(
        accelerator,
        run.data_options(data=args.data, split=args.split, image_column=args.image_column),
        num_samples=args.fid_samples,
        batch_size=args.batch_size or run.config.batch_size,
        cache_dir=args.fid_cache,
        seed=run.config.seed,
        weights_path=args.fid_weights,
    )
    scores = evaluator.evaluate(generator.to(accelerator.device), run.config.latent_dim)
    accelerator.end_training()
    return {"step": checkpoint_step(checkpoint), **scores, "samples": args.fid_samples}


def main(argv: list[str] | None = None) -> int:
    relaunch_on_cpu_processes()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the training run's --out folder")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint folder (default: the latest)")
    parser.add_argument(
        "--fid-samples", type=int, default=50_000, help="generated and real images compared (default: 50000, as published FIDs)"
    )
    parser.add_argument(
        "--fid-weights", default=None,
        help="torch-fidelity's Inception weights file (default: torch.hub's cache; never downloaded)",
    )
    parser.add_argument(
        "--fid-cache", type=Path, default=default_cache_dir(), help=f"real statistics cache (default: {default_cache_dir()})"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help="images per process per forward (default: the run's; the generated set depends on it)",
    )
    parser.add_argument("--data", default=None, help="real images from another source than the run's --data, e.g. a local parquet copy")
    parser.add_argument("--split", default=None, help="dataset split (default: the run's)")
    parser.add_argument("--image-column", default=None, help="image column (default: the run's)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON line to this file")
    args = parser.parse_args(argv)
    if args.fid_samples < 4:
        parser.error(f"--fid-samples {args.fid_samples}: must be at least 4")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be at least 1")
    try:
        result = evaluate(args)
    except (RunNotFound, FIDUnavailable, FIDNotApplicable, DataSpecError, DataError) as error:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    if os.environ.get("RANK", "0") == "0":
        line = json.dumps(result)
        print(line)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
