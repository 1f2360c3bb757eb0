"""DCGAN-style pair (Radford et al. 2016) that grows one block per doubling from 4x4."""
import torch
from torch import nn

from models.layers import channels_at, critic_norm, doublings


class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int, resolution: int, channel_base: int, channel_max: int):
        super().__init__()
        width = lambda res: channels_at(res, channel_base, channel_max)  # noqa: E731
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, width(4), 4, 1, 0, bias=False),
            nn.BatchNorm2d(width(4)),
            nn.ReLU(inplace=True),
        ]
        for res in doublings(4, resolution // 2):
            layers += [
                nn.ConvTranspose2d(width(res), width(2 * res), 4, 2, 1, bias=False),
                nn.BatchNorm2d(width(2 * res)),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(width(resolution // 2), 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class DCGANCritic(nn.Module):
    def __init__(self, resolution: int, channel_base: int, channel_max: int, norm: str = "layer"):
        super().__init__()
        width = lambda res: channels_at(res, channel_base, channel_max)  # noqa: E731
        layers: list[nn.Module] = [
            nn.Conv2d(3, width(resolution // 2), 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for res in reversed(doublings(8, resolution)):
            layers += [
                nn.Conv2d(width(res), width(res // 2), 4, 2, 1),
                critic_norm(norm, width(res // 2)),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers += [nn.Conv2d(width(4), 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten()
