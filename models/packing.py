"""PacGAN packing (Lin et al. 2018): the critic judges `pack` samples at once, stacked along channels.

A critic that sees several samples together can tell a collapsed generator (its samples look alike)
from a diverse one, which penalises mode collapse. Packs are consecutive samples, so a batch built as
cat([real, fake]) with len(real) divisible by `pack` never mixes real and fake in one pack.
"""
import torch
from einops import rearrange


def pack_samples(samples: torch.Tensor, pack: int) -> torch.Tensor:
    """(N, C, H, W) images or (N, D) points as N / pack packs of `pack` consecutive samples each."""
    if pack == 1:
        return samples
    if len(samples) % pack:
        raise ValueError(f"a batch of {len(samples)} cannot be split into packs of {pack}; use a multiple of {pack}")
    if samples.ndim == 4:
        return rearrange(samples, "(b m) c h w -> b (m c) h w", m=pack)
    return rearrange(samples, "(b m) d -> b (m d)", m=pack)
