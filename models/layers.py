"""Building blocks shared by the generator/critic pairs."""
from torch import nn

IMAGE_RESOLUTIONS = (64, 128, 256, 512, 1024)
MIN_CHANNELS = 16
CRITIC_NORMS = ("layer", "instance", "none")


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at one spatial size: wide at low resolution, narrow at high, capped.

    StyleGAN's rule (channels = base / resolution, capped at max): the cap keeps low-resolution
    layers affordable and the falling width keeps 1024x1024 activations within GPU memory; a
    floor of 16 keeps the highest resolutions from thinning out to a handful of channels.
    """
    return min(channel_max, max(MIN_CHANNELS, channel_base // resolution))


def critic_norm(kind: str, channels: int) -> nn.Module:
    # Per-sample norms only: the gradient penalty is taken per sample, and BatchNorm would make one
    # sample's score depend on the others (Gulrajani et al. 2017, section 4).
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
