"""The truncation trick at sampling (Brock et al. 2019, BigGAN, section 3.1): latents drawn from
N(0, I) with every component of |z| > psi redrawn until it falls within psi, i.e. from a normal
truncated to [-psi, psi] in each coordinate. Smaller psi trades diversity for samples nearer the
generator's mode; psi -> 0 sends every latent to 0 and so every sample to G(0); no psi is the
plain N(0, I) draw the generators were trained on.

Every generator here takes N(0, I) latents (the trainers draw them with torch.randn), so the trick
applies to all of them, the toy MLP included.
"""
import argparse
import math

import torch
from torch import nn

TRUNCATION_HELP = (
    "the truncation trick (BigGAN): every latent component beyond +-PSI is redrawn from N(0, 1) until it"
    " lies within PSI, so the latents are a normal truncated to [-PSI, PSI]; smaller PSI, less diverse and"
    " more typical samples; PSI > 0 (default: none, the N(0, I) draw of training)"
)
# Rows drawn, then truncated, at a time in generate.py: a multiple of its .npy chunks and of
# render_samples' forwards, so a grid and a .npy of the same seed get the same truncated latents.
TRUNCATION_BLOCK = 16


def truncation_psi(text: str) -> float:
    """argparse type of --truncation: a finite psi > 0 (psi = 0 would redraw forever)."""
    try:
        psi = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give PSI > 0, e.g. 0.5") from None
    if not (math.isfinite(psi) and psi > 0):
        raise argparse.ArgumentTypeError(f"{text}: PSI must be a finite number above 0 (leave the flag out for no truncation)")
    return psi


def redraw_beyond(z: torch.Tensor, psi: float, rng: torch.Generator | None = None) -> torch.Tensor:
    """`z` with each component of |z| > psi redrawn from N(0, 1) (from `rng`, else torch's global
    generator on z's device) until within psi; the components already within psi are kept as drawn."""
    z = z.clone()
    outside = z.abs() > psi
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=rng, device=z.device, dtype=z.dtype)
        outside = z.abs() > psi
    return z


def truncated_latents(n: int, latent_dim: int, rng: torch.Generator, psi: float | None) -> torch.Tensor:
    """(n, latent_dim) latents from `rng`: with no psi, torch.randn's one draw, bit for bit as
    before truncation existed; with psi, TRUNCATION_BLOCK rows drawn and truncated at a time, so
    that a draw in chunks of a multiple of the block gives the same latents as one draw."""
    if psi is None:
        return torch.randn(n, latent_dim, generator=rng)
    blocks = [
        redraw_beyond(torch.randn(min(TRUNCATION_BLOCK, n - start), latent_dim, generator=rng), psi, rng)
        for start in range(0, n, TRUNCATION_BLOCK)
    ]
    return torch.cat(blocks) if blocks else torch.empty(0, latent_dim)


class TruncatedGenerator(nn.Module):
    """`generator` fed its latents truncated at psi, for callers that draw N(0, I) latents themselves
    (the FID and Stacked MNIST evaluators). The redraws come from torch's global generator, which
    the evaluators seed per block of samples: the samples stay independent of the number of ranks."""

    def __init__(self, generator: nn.Module, psi: float):
        super().__init__()
        self.generator, self.psi = generator, psi

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(redraw_beyond(z, self.psi))
