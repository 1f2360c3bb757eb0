"""Export a finished run's EMA generator, with a dynamic batch dimension, and verify the file.

    python -m train.export --run DIR --format onnx --output G.onnx [--checkpoint CKPT]
    python -m train.export --run DIR --format torchscript --output G.pt

The file maps latents (B, latent_dim) drawn from N(0, I) (or truncated, train/run/truncation.py)
to samples: images (B, 3, H, W) in [-1, 1], or a toy run's points (B, 2). Before it is put in
place it is run (onnxruntime on the CPU; torch.jit.load) on a batch of 5 latents, not the batch of
2 it was exported at, against the PyTorch generator in eval mode, and the largest absolute
difference is printed; above 1e-4 nothing is written. A generator with an operator the format
cannot express is refused in one line naming the operator.
"""
import argparse
import sys
from pathlib import Path

import torch

from models.export import FORMATS, MAX_DIFFERENCE, SUFFIXES, UnexportableOperator, export_generator, max_difference
from train.common.atomic import atomic_write
from train.common.writable import Unwritable, check_writable, written
from train.run.finished import FinishedRun, RunNotFound
from train.run.outcome import BAD_INPUT

VERIFY_SAMPLES = 5  # not models.export.EXAMPLE_BATCH: a second batch size proves the batch dynamic
VERIFY_SEED = 1


class ExportError(RuntimeError):
    """The exported file does not reproduce the generator, or its runtime is missing."""


def export_run(run: Path, export_format: str, output: Path, checkpoint: Path | None = None) -> float:
    """Export `run`'s EMA generator to `output`; returns the verified max absolute difference."""
    finished = FinishedRun(run)
    if output.suffix not in SUFFIXES[export_format]:
        raise Unwritable(f"--output {output}: --format {export_format} writes {' or '.join(SUFFIXES[export_format])} files;"
                         " change the file extension")
    check_writable("--output", output)
    generator, _ = finished.ema_generator(checkpoint)
    latents = torch.randn(VERIFY_SAMPLES, finished.config.latent_dim, generator=torch.Generator().manual_seed(VERIFY_SEED))
    measured: list[float] = []

    def export_and_verify(tmp: Path) -> None:
        export_generator(generator, finished.config.latent_dim, export_format, tmp)
        measured.append(max_difference(generator, tmp, export_format, latents))
        if not measured[0] <= MAX_DIFFERENCE:  # `not <=`: a NaN difference fails too
            raise ExportError(f"the exported {export_format} model differs from the PyTorch generator by up to"
                              f" {measured[0]:.3g} (limit {MAX_DIFFERENCE:g}); nothing written")

    with written("--output", output):
        atomic_write(output, export_and_verify)  # the file appears only once verified
    return measured[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the training run's --out folder")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (onnxruntime) or torchscript (torch.jit.load)")
    parser.add_argument("--output", type=Path, required=True, help="the file to write: .onnx, or .pt for torchscript")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint folder (default: the latest)")
    args = parser.parse_args(argv)
    try:
        difference = export_run(args.run, args.format, args.output, args.checkpoint)
    except (RunNotFound, Unwritable) as error:
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    except UnexportableOperator as error:
        other = next(f for f in FORMATS if f != args.format)
        print(f"error: --format {args.format}: {error}; try --format {other}".replace("\n", " "), file=sys.stderr)
        return BAD_INPUT
    except (ExportError, ImportError) as error:  # ImportError: onnxruntime (requirements.txt) not installed
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"exported {args.run}'s EMA generator to {args.output} ({args.format}, dynamic batch); max |exported - PyTorch|"
          f" = {difference:.3g} over {VERIFY_SAMPLES} samples (limit {MAX_DIFFERENCE:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
