"""The WGAN-GP paper's ResNet pair (Gulrajani et al. 2017, 64x64 ResNet, appendix C).

At 64x64 with channel_base 4096 the widths are the paper's (8, 8, 4, 2, 1 x 64); higher resolutions
add one residual block per doubling.
"""
import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from models.layers import channels_at, critic_norm, doublings
from models.packing import pack_samples


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(F.interpolate(x, scale_factor=2))


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.main = nn.Sequential(
            critic_norm(norm, in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            critic_norm(norm, in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.AvgPool2d(2),
        )
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


class ResNetGenerator(nn.Module):
    def __init__(self, latent_dim: int, resolution: int, channel_base: int, channel_max: int):
        super().__init__()
        width = lambda res: channels_at(res, channel_base, channel_max)
        self.stem = nn.Linear(latent_dim, 4 * 4 * width(4))
        self.blocks = nn.Sequential(*(UpBlock(width(res), width(2 * res)) for res in doublings(4, resolution)))
        self.to_rgb = nn.Sequential(
            nn.BatchNorm2d(width(resolution)),
            nn.ReLU(),
            nn.Conv2d(width(resolution), 3, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.stem(z), "n (c h w) -> n c h w", h=4, w=4)
        return self.to_rgb(self.blocks(x))


class ResNetCritic(nn.Module):
    """Scores images, or with `pack` > 1 packs of `pack` consecutive images (PacGAN): N / pack scores."""

    def __init__(self, resolution: int, channel_base: int, channel_max: int, norm: str = "layer", pack: int = 1):
        super().__init__()
        self.pack = pack
        width = lambda res: channels_at(res, channel_base, channel_max)
        self.from_rgb = nn.Conv2d(3 * pack, width(resolution), 3, padding=1)
        self.blocks = nn.Sequential(
            *(DownBlock(width(res), width(res // 2), norm) for res in reversed(doublings(8, 2 * resolution)))
        )
        self.head = nn.Linear(4 * 4 * width(4), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.from_rgb(pack_samples(images, self.pack)))
        return self.head(rearrange(features, "n c h w -> n (c h w)")).flatten()
