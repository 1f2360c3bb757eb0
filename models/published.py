"""The DCGAN networks of the published Stacked MNIST tables, layer for layer, for like-for-like numbers.

PacGAN (Lin et al. 2018, Tables 2 and 3) compares on three pairs, read from its code
(github.com/fjxmlzn/PacGAN, stacked_MNIST_experiments/, TensorFlow):

- "metz-quarter" and "metz-half": Metz et al. (2017)'s small DCGAN for Stacked MNIST, with the
  discriminator at 1/4 and at 1/2 of the generator's widths (unrolled_GAN_experiment/D=0.25G/model.py
  and D=0.5G/model.py). Generator: a linear projection to 4x4x64, then 3x3 stride-2 transposed convs
  to 32, 16 and 8 channels, each with BatchNorm and ReLU, then a 3x3 stride-1 conv to RGB and tanh.
  Discriminator: three 3x3 stride-2 convs, each with BatchNorm (the first too) and leaky ReLU of slope
  0.3, widths 2, 4, 8 (1/4 of the generator's 8, 16, 32 mirrored) or 4, 8, 16 (1/2), then a linear
  layer to one logit.
- "veegan": the DCGAN of VEEGAN's Stacked MNIST row (Srivastava et al. 2017), as PacGAN ran it:
  carpedm20/DCGAN-tensorflow at gf_dim = df_dim = 64 (VEEGAN_experiment/model.py). Generator: a
  linear projection to 2x2x512, then four 5x5 stride-2 transposed convs to 256, 128, 64 channels
  (BatchNorm, ReLU) and to RGB (tanh). Discriminator: four 5x5 stride-2 convs to 64, 128, 256, 512
  channels (BatchNorm on all but the first, leaky ReLU 0.2), then a linear layer to one logit.

The reference code is 28 px; these are 32 px, Stacked MNIST zero-padded as train/data/stacked_mnist.py
serves it: each map's side doubles from the same start (4 -> 32 rather than 4 -> 7 -> 28; 2 -> 32 rather
than 2 -> 4 -> 7 -> 28), and the discriminators end on the same 4x4 and 2x2 maps, so every layer keeps
its kernel, width and parameter count. Every conv and linear layer has a bias, as in the reference (its
parameter counts, which its code prints, are these networks'), those before BatchNorm included, which it
cancels. Normalisation, biases and the init follow the 'dcgan' switches (`DCGANOptions`: g_norm,
d_first_norm, conv_bias, and dcgan_init for the reference's init) and the critic norm, whose reference
values train/dcgan.py's --networks presets set; the layers themselves (kernels, widths, activations)
are the reference's alone.
"""
import dataclasses

import torch
from torch import nn

from models.layers import critic_norm
from models.packing import pack_samples

INIT_STD = 0.02  # the reference's initialisers (carpedm20's ops.py): N(0, 0.02) weights, zero biases


@dataclasses.dataclass(frozen=True)
class PublishedLayout:
    """One published pair's layers. The generator projects the latent to a g_start x g_start map of
    g_widths[0] channels, doubles the side once per further width, then reaches RGB by a stride-1
    conv ("conv") or by one more doubling ("upsample"); the discriminator halves the side once per
    d_widths entry, then one linear layer scores the last map."""

    source: str  # the reference code read, in fjxmlzn/PacGAN
    g_start: int
    g_widths: tuple[int, ...]
    g_kernel: int
    to_rgb: str  # "conv" or "upsample"
    d_widths: tuple[int, ...]
    d_kernel: int
    d_leaky_slope: float

    @property
    def resolution(self) -> int:
        return self.g_start * 2 ** (len(self.g_widths) - 1 + (self.to_rgb == "upsample"))


METZ_GENERATOR = {"g_start": 4, "g_widths": (64, 32, 16, 8), "g_kernel": 3, "to_rgb": "conv", "d_kernel": 3, "d_leaky_slope": 0.3}
PUBLISHED = {
    "metz-quarter": PublishedLayout(
        "stacked_MNIST_experiments/unrolled_GAN_experiment/D=0.25G/model.py", d_widths=(2, 4, 8), **METZ_GENERATOR
    ),
    "metz-half": PublishedLayout(
        "stacked_MNIST_experiments/unrolled_GAN_experiment/D=0.5G/model.py", d_widths=(4, 8, 16), **METZ_GENERATOR
    ),
    "veegan": PublishedLayout(
        "stacked_MNIST_experiments/VEEGAN_experiment/model.py", g_start=2, g_widths=(512, 256, 128, 64), g_kernel=5,
        to_rgb="upsample", d_widths=(64, 128, 256, 512), d_kernel=5, d_leaky_slope=0.2,
    ),
}
# The 'dcgan' switches that reshape layers the published networks fix; the others (norms, biases, init) apply.
LAYER_SWITCHES = ("g_activation", "d_activation", "upsample", "downsample", "g_dropout", "d_dropout")


def doubling(in_channels: int, out_channels: int, kernel: int, bias: bool) -> nn.ConvTranspose2d:
    # TF's SAME transposed conv: out = 2 x in, for an odd kernel.
    return nn.ConvTranspose2d(in_channels, out_channels, kernel, 2, kernel // 2, output_padding=1, bias=bias)


def halving(in_channels: int, out_channels: int, kernel: int, bias: bool) -> nn.Conv2d:
    # TF's SAME strided conv: out = in / 2 for an even side.
    return nn.Conv2d(in_channels, out_channels, kernel, 2, kernel // 2, bias=bias)


def init_reference_(network: nn.Module) -> None:
    """The reference's init: conv weights from N(0, 0.02) truncated at 2 std (TF's conv2d), transposed
    conv and linear weights from N(0, 0.02), biases 0, BatchNorm scales 1 and shifts 0."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.trunc_normal_(module.weight, 0.0, INIT_STD, -2 * INIT_STD, 2 * INIT_STD)
        elif isinstance(module, (nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, INIT_STD)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)) and module.bias is not None:
            nn.init.zeros_(module.bias)


class PublishedGenerator(nn.Module):
    def __init__(self, layout: PublishedLayout, latent_dim: int, g_norm: str = "batch", bias: bool = True, reference_init: bool = True):
        super().__init__()
        side, widths, kernel = layout.g_start, layout.g_widths, layout.g_kernel

        def tail(channels: int) -> list[nn.Module]:
            return ([nn.BatchNorm2d(channels)] if g_norm == "batch" else []) + [nn.ReLU(inplace=True)]

        layers: list[nn.Module] = [nn.Linear(latent_dim, widths[0] * side * side, bias=bias), nn.Unflatten(1, (widths[0], side, side)), *tail(widths[0])]
        for in_channels, out_channels in zip(widths, widths[1:]):
            layers += [doubling(in_channels, out_channels, kernel, bias), *tail(out_channels)]
        if layout.to_rgb == "conv":
            layers.append(nn.Conv2d(widths[-1], 3, kernel, 1, kernel // 2, bias=bias))
        else:
            layers.append(doubling(widths[-1], 3, kernel, bias))
        self.net = nn.Sequential(*layers, nn.Tanh())
        if reference_init:
            init_reference_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class PublishedCritic(nn.Module):
    """Scores images, or with `pack` > 1 packs of `pack` consecutive images (PacGAN): N / pack scores."""

    def __init__(self, layout: PublishedLayout, norm: str = "batch", first_norm: bool = True, bias: bool = True,
                 reference_init: bool = True, pack: int = 1):
        super().__init__()
        self.pack = pack
        layers: list[nn.Module] = []
        in_channels = 3 * pack
        for index, channels in enumerate(layout.d_widths):
            layers.append(halving(in_channels, channels, layout.d_kernel, bias))
            if index > 0 or first_norm:
                layers.append(critic_norm(norm, channels))
            layers.append(nn.LeakyReLU(layout.d_leaky_slope, inplace=True))
            in_channels = channels
        side = layout.resolution // 2 ** len(layout.d_widths)
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(in_channels * side * side, 1, bias=bias))
        if reference_init:
            init_reference_(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(pack_samples(images, self.pack)).flatten()
