"""What the truncation trick (train/run/truncation.py) does to a finished run's samples: diversity
against psi, as generate.py --truncation PSI draws them.

    python bench/truncation_diversity.py --run DIR [--samples 1000] [--psis 0.25 0.5 1 2 none]

Diversity is the mean pairwise L2 distance between samples (images in [-1, 1], or a toy run's points
in data coordinates) and the mean per-coordinate standard deviation across samples; toy runs add
the PacGAN mode coverage (train/report/modes.py): modes covered and the fraction of high-quality
samples, the quality side of the trade. For FID/KID or Stacked MNIST's scores against psi, run
`train/evaluate.py --run DIR --truncation PSI` for each psi.
"""
import argparse
from pathlib import Path

import torch

from train.generate import latent_draws
from train.report.modes import mode_coverage
from train.run.finished import FinishedRun
from train.run.networks import render_samples
from train.run.truncation import truncation_psi


def psi_or_none(text: str) -> float | None:
    return None if text == "none" else truncation_psi(text)


def diversity(samples: torch.Tensor) -> tuple[float, float]:
    """(mean pairwise L2 distance, mean per-coordinate std) of (N, ...) samples."""
    flat = samples.flatten(1).double()
    pairwise = torch.cdist(flat, flat).sum().item() / (len(flat) * (len(flat) - 1))
    return pairwise, flat.std(dim=0).mean().item()


def row(finished: FinishedRun, generator: torch.nn.Module, psi: float | None, samples: int, seed: int) -> str:
    latents = latent_draws(1, samples, finished.config.latent_dim, seed, psi)[0]
    drawn = render_samples(generator, latents)
    pairwise, std = diversity(drawn)
    cells = [f"{psi:g}" if psi is not None else "none", f"{pairwise:.3f}", f"{std:.3f}"]
    if finished.is_points:
        coverage = mode_coverage(drawn, *finished.modes())
        cells += [f"{coverage.modes}/{coverage.total_modes}", f"{100 * coverage.high_quality:.1f}%"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished training run's --out folder")
    parser.add_argument("--samples", type=int, default=1000, help="samples per psi (default: 1000)")
    parser.add_argument("--psis", type=psi_or_none, nargs="+", default=[0.25, 0.5, 1.0, 2.0, None], help="'none': no truncation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    finished = FinishedRun(args.run)
    generator, checkpoint = finished.ema_generator()
    header = ["psi", "mean pairwise distance", "mean std"] + (["modes", "high quality"] if finished.is_points else [])
    print(f"{args.run} ({checkpoint.name}), {args.samples} samples, seed {args.seed}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for psi in args.psis:
        print(row(finished, generator, psi, args.samples, args.seed), flush=True)


if __name__ == "__main__":
    main()
