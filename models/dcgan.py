"""DCGAN-style pair (Radford et al. 2016) that grows one block per doubling from 4x4.

`DCGANOptions` holds the switches of the usual DCGAN ablations. At their defaults the pair is the
house DCGAN the WGAN-GP trainer has always built; with `critic_norm="batch"`, `conv_bias=False` and
`dcgan_init=True` at 64 px (channel_base 2048, channel_max 512) it is the PyTorch DCGAN tutorial's,
except that the critic returns logits (the objective applies the sigmoid, in a numerically stable loss).
"""
import dataclasses

import torch
from torch import nn

from models.layers import channels_at, critic_norm, doublings
from models.packing import pack_samples
from models.published import PUBLISHED

LEAKY_SLOPE = 0.2  # Radford et al. 2016, section 3
DCGAN_INIT_STD = 0.02  # Radford et al. 2016, section 4

PROJECT_NETWORKS = "project"
DCGAN_CHOICES = {
    "networks": (PROJECT_NETWORKS, *PUBLISHED),
    "g_norm": ("batch", "none"),
    "g_activation": ("relu", "leaky_relu"),
    "d_activation": ("relu", "leaky_relu"),
    "upsample": ("k4s2", "k2s2"),
    "downsample": ("strided", "maxpool"),
}


@dataclasses.dataclass(frozen=True)
class DCGANOptions:
    """Architecture switches of the 'dcgan' pair; the critic's norm kind is `critic_norm`, shared by all models."""

    networks: str = PROJECT_NETWORKS  # or a published Stacked MNIST pair (models/published.py), whose layers it fixes
    g_norm: str = "batch"  # after every generator conv but the last
    d_first_norm: bool = False  # the critic's norm on its first layer too (Radford et al. leave it off)
    g_activation: str = "relu"
    d_activation: str = "leaky_relu"
    upsample: str = "k4s2"  # "k2s2": kernels that tile exactly, no checkerboard overlap (Odena et al. 2016)
    downsample: str = "strided"  # "maxpool": a 3x3 conv then 2x2 max pooling, the pre-DCGAN way
    g_dropout: float = 0.0  # Dropout2d after each hidden block's activation
    d_dropout: float = 0.0
    conv_bias: bool = True  # biases on every conv not followed by BatchNorm, whose mean subtraction cancels them
    dcgan_init: bool = False  # Radford et al.'s N(0, 0.02) instead of PyTorch's default init

    def changed(self) -> list[str]:
        """Names of the fields away from their defaults."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]


DCGAN_SWITCHES = tuple(f.name for f in dataclasses.fields(DCGANOptions))


def activation(kind: str) -> nn.Module:
    # In place: nothing reads a pre-activation map again, and it saves one map per block.
    return nn.ReLU(inplace=True) if kind == "relu" else nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


def upsampling(in_channels: int, out_channels: int, kind: str, bias: bool) -> nn.ConvTranspose2d:
    if kind == "k4s2":
        return nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=bias)
    return nn.ConvTranspose2d(in_channels, out_channels, 2, 2, 0, bias=bias)


def downsampling(in_channels: int, out_channels: int, kind: str, bias: bool) -> list[nn.Module]:
    if kind == "strided":
        return [nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=bias)]
    return [nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=bias), nn.MaxPool2d(2)]


def after_conv(norm: nn.Module | None, act: str, dropout: float) -> list[nn.Module]:
    """A hidden block's tail; layers only where they do something, so the defaults keep their state_dict keys."""
    layers = [norm] if norm is not None else []
    layers.append(activation(act))
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return layers


def init_dcgan_(network: nn.Module) -> None:
    """Radford et al.'s init as the PyTorch tutorial reads it: conv weights N(0, 0.02), BatchNorm scales
    N(1, 0.02), biases 0; in module order, so a seed gives the tutorial's weights."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, DCGAN_INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, DCGAN_INIT_STD)
            nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    def __init__(
        self, latent_dim: int, resolution: int, channel_base: int, channel_max: int, options: DCGANOptions = DCGANOptions()
    ):
        super().__init__()
        width = lambda res: channels_at(res, channel_base, channel_max)
        bias = options.conv_bias and options.g_norm != "batch"

        def block(conv: nn.Module) -> list[nn.Module]:
            norm = nn.BatchNorm2d(conv.out_channels) if options.g_norm == "batch" else None
            return [conv, *after_conv(norm, options.g_activation, options.g_dropout)]

        layers = block(nn.ConvTranspose2d(latent_dim, width(4), 4, 1, 0, bias=bias))
        for res in doublings(4, resolution // 2):
            layers += block(upsampling(width(res), width(2 * res), options.upsample, bias))
        layers += [upsampling(width(resolution // 2), 3, options.upsample, options.conv_bias), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        if options.dcgan_init:
            init_dcgan_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class DCGANCritic(nn.Module):
    """Scores images, or with `pack` > 1 packs of `pack` consecutive images (PacGAN): N / pack scores."""

    def __init__(
        self,
        resolution: int,
        channel_base: int,
        channel_max: int,
        norm: str = "layer",
        options: DCGANOptions = DCGANOptions(),
        pack: int = 1,
    ):
        super().__init__()
        self.pack = pack
        width = lambda res: channels_at(res, channel_base, channel_max)
        bias = options.conv_bias and norm != "batch"
        first_bias = bias if options.d_first_norm else options.conv_bias
        first_norm = critic_norm(norm, width(resolution // 2)) if options.d_first_norm else None
        layers: list[nn.Module] = [
            *downsampling(3 * pack, width(resolution // 2), options.downsample, first_bias),
            *after_conv(first_norm, options.d_activation, options.d_dropout),
        ]
        for res in reversed(doublings(8, resolution)):
            layers += [
                *downsampling(width(res), width(res // 2), options.downsample, bias),
                *after_conv(critic_norm(norm, width(res // 2)), options.d_activation, options.d_dropout),
            ]
        layers += [nn.Conv2d(width(4), 1, 4, 1, 0, bias=options.conv_bias)]
        self.net = nn.Sequential(*layers)
        if options.dcgan_init:
            init_dcgan_(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(pack_samples(images, self.pack)).flatten()
