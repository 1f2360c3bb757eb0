"""FID and KID of a finished run's EMA generator, against real images of its data source.

    python train/evaluate.py --run DIR [--checkpoint CKPT] [--samples N] [--fid-weights PATH]
    accelerate launch train/evaluate.py --run DIR ...      # feature extraction shared by every process

Prints one JSON line {"step", "fid", "kid_mean", "kid_std", "samples"} (and writes it to --output).
The real statistics are cached in --fid-cache and shared with training runs on the same data.

A --data stacked-mnist run is judged by its digit classifier instead (train/report/stacked_mnist.py):
{"step", "modes", "kl", "frechet", "real_modes", "real_kl", "real_frechet", "samples"}, the real_
scores those of as many real samples (the floor a perfect generator would reach); 26,000 samples
by default, as PacGAN's and VEEGAN's tables.

--truncation PSI scores the samples of latents truncated at PSI (train/run/truncation.py), to
report either score against psi; the JSON line then holds "truncation": PSI.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

from train.common.atomic import atomic_write_text
from train.common.writable import Unwritable, check_writable, written
from train.data import DataError, DataSpecError
from train.report.fid import (
    FIDEvaluator,
    FIDNotApplicable,
    FIDUnavailable,
    default_cache_dir,
)
from train.report.stacked_mnist import REAL_FLOOR_SAMPLES, ClassifierUnfit, StackedMNISTEvaluator
from train.run.checkpoint import checkpoint_step
from train.run.finished import FinishedRun, RunNotFound
from train.run.multi_cpu import relaunch_on_cpu_processes
from train.run.outcome import BAD_INPUT
from train.run.truncation import TRUNCATION_HELP, TruncatedGenerator, truncation_psi

FID_SAMPLES = 50_000


def evaluate(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator

    run = FinishedRun(args.run)
    data = run.data_options(data=args.data, split=args.split, image_column=args.image_column)
    stacked = data.spec.kind == "stacked-mnist"
    samples = args.samples or (REAL_FLOOR_SAMPLES if stacked else FID_SAMPLES)
    generator, checkpoint = run.ema_generator(args.checkpoint)
    if args.truncation is not None:
        generator = TruncatedGenerator(generator, args.truncation)
    # Evaluation needs neither mixed precision nor DDP: only the process group, on the CPU without CUDA.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    batch_size = args.batch_size or run.config.batch_size
    if stacked:
        evaluator = StackedMNISTEvaluator(accelerator, num_samples=samples, batch_size=batch_size, seed=run.config.seed)
    else:
        evaluator = FIDEvaluator(
            accelerator, data, num_samples=samples, batch_size=batch_size, cache_dir=args.fid_cache,
            seed=run.config.seed, weights_path=args.fid_weights,
        )
    scores = evaluator.evaluate(generator.to(accelerator.device), run.config.latent_dim)
    if stacked:
        scores.update({f"real_{name}": value for name, value in evaluator.real_floor().items()})
    accelerator.end_training()
    truncation = {} if args.truncation is None else {"truncation": args.truncation}
    return {"step": checkpoint_step(checkpoint), **scores, "samples": samples, **truncation}


def main(argv: list[str] | None = None) -> int:
    relaunch_on_cpu_processes()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the training run's --out folder, or hf:USER/NAME (train/publish.py)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint folder (default: the latest)")
    parser.add_argument(
        "--samples", "--fid-samples", type=int, default=None, dest="samples",
        help=f"generated and real images compared (default: {FID_SAMPLES}, as published FIDs; stacked-mnist: {REAL_FLOOR_SAMPLES}, as PacGAN's)",
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
    parser.add_argument("--truncation", type=truncation_psi, default=None, metavar="PSI", help=TRUNCATION_HELP)
    args = parser.parse_args(argv)
    if args.samples is not None and args.samples < 4:
        parser.error(f"--samples {args.samples}: must be at least 4")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be at least 1")
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        if args.output:  # before the evaluation, which can take an hour
            check_writable("--output", args.output)
        result = evaluate(args)
        if main_process:
            line = json.dumps(result)
            print(line)
            if args.output:
                with written("--output", args.output):
                    atomic_write_text(args.output, line + "\n")
    except (RunNotFound, FIDUnavailable, FIDNotApplicable, DataSpecError, DataError, ClassifierUnfit, Unwritable) as error:
        if main_process:
            print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
