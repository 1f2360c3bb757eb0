"""The MLP pair of the WGAN-GP authors' toy experiments (4 linear layers, ReLU, 512 wide)."""
import torch
from torch import nn

from models.packing import pack_samples

TOY_DIM = 2


def _mlp(in_features: int, hidden: int, out_features: int, depth: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth - 1):
        layers += [nn.Linear(in_features if i == 0 else hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, out_features))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    """Maps latents straight to data coordinates: no output squashing, no hidden rescaling."""

    def __init__(self, latent_dim: int, hidden: int = 512):
        super().__init__()
        self.net = _mlp(latent_dim, hidden, TOY_DIM)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MLPCritic(nn.Module):
    """Scores points, or with `pack` > 1 packs of `pack` consecutive points (PacGAN): N / pack scores."""

    def __init__(self, hidden: int = 512, pack: int = 1):
        super().__init__()
        self.pack = pack
        self.net = _mlp(TOY_DIM * pack, hidden, 1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.net(pack_samples(points, self.pack)).flatten()
