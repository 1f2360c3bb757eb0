"""Building blocks shared by the generator/critic pairs."""
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

# 32: Stacked MNIST's size (Metz et al. 2017; PacGAN, VEEGAN), the mode-coverage benchmark.
IMAGE_RESOLUTIONS = (32, 64, 128, 256, 512, 1024)
MIN_CHANNELS = 16
PER_SAMPLE_NORMS = ("layer", "instance", "none")
CRITIC_NORMS = (*PER_SAMPLE_NORMS, "batch")


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at one spatial size: wide at low resolution, narrow at high, capped.

    StyleGAN's rule (channels = base / resolution, capped at max): the cap keeps low-resolution
    layers affordable and the falling width keeps 1024x1024 activations within GPU memory; a
    floor of 16 keeps the highest resolutions from thinning out to a handful of channels.
    """
    return min(channel_max, max(MIN_CHANNELS, channel_base // resolution))


def critic_norm(kind: str, channels: int) -> nn.Module:
    # Per-sample norms wherever a gradient penalty is taken: it is per sample, and BatchNorm would make
    # one sample's score depend on the others (Gulrajani et al. 2017, section 4). "batch" is the
    # original DCGAN discriminator's (Radford et al. 2016); the registry allows it for 'dcgan' alone.
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown critic norm {kind!r}; choose one of {', '.join(CRITIC_NORMS)}")


def doublings(start: int, stop: int) -> list[int]:
    """Spatial sizes start, 2*start, ... up to but not including stop."""
    sizes = []
    while start < stop:
        sizes.append(start)
        start *= 2
    return sizes


def spectral_normed(network: nn.Module) -> nn.Module:
    """`network` with every conv, transposed conv and linear weight divided by its largest singular
    value (Miyato et al. 2018), estimated by one power iteration per forward in train mode."""
    layers = [m for m in network.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    for layer in layers:
        # A transposed conv's weight is (in, out, k, k): its outputs are dimension 1, not 0 (PyTorch's
        # default picks this too; said here so the bound normalised is plainly the layer's own).
        spectral_norm(layer, dim=1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0)
    return network
