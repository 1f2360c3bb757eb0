"""A run's generator/critic pair from its configuration, and what its generator draws."""
from typing import TYPE_CHECKING

import torch
from torch import nn

from models import build_pair

if TYPE_CHECKING:
    from train.run.config import TrainConfig

SAMPLE_CHUNK = 16  # generator forwards per render: a 1024 px grid of 64 at once would not fit


def build_networks(config: "TrainConfig") -> tuple[nn.Module, nn.Module]:
    """The run's pair, from the model options its recipe's config builds."""
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    return build_pair(config.model_options())


def fixed_noise(num_samples: int, latent_dim: int, seed: int) -> torch.Tensor:
    """The evaluation latents: a function of the run's seed alone, so the same on every rank and resume."""
    return torch.randn(num_samples, latent_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def render_samples(generator: nn.Module, noise: torch.Tensor) -> torch.Tensor:
    generator.eval()
    device = next(generator.parameters()).device
    return torch.cat([generator(chunk.to(device)).float().cpu() for chunk in noise.split(SAMPLE_CHUNK)])
