"""A run's generator/critic pair from its configuration, and what its generator draws."""
import inspect
from typing import Any

import torch
from torch import nn

from models import build_models

SAMPLE_CHUNK = 16  # generator forwards per render: a 1024 px grid of 64 at once would not fit


def build_networks(config: Any) -> tuple[nn.Module, nn.Module]:
    """The run's pair from its config (or a saved config.json's values): every builder argument it holds."""
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    arguments = inspect.signature(build_models).parameters
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(config).items() if k in arguments and k != "name"}
    return build_models(config.model, **given)


def fixed_noise(num_samples: int, latent_dim: int, seed: int) -> torch.Tensor:
    """The evaluation latents: a function of the run's seed alone, so the same on every rank and resume."""
    return torch.randn(num_samples, latent_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def render_samples(generator: nn.Module, noise: torch.Tensor) -> torch.Tensor:
    generator.eval()
    device = next(generator.parameters()).device
    return torch.cat([generator(chunk.to(device)).float().cpu() for chunk in noise.split(SAMPLE_CHUNK)])
