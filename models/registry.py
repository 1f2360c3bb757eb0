"""Generator/critic pairs by name: the one place that maps a name and a resolution to modules."""
from torch import nn

from models.dcgan import DCGANCritic, DCGANGenerator
from models.layers import CRITIC_NORMS, IMAGE_RESOLUTIONS
from models.lightweight import (
    LightweightDiscriminator,
    LightweightGenerator,
    attention_sizes,
)
from models.mlp import MLPCritic, MLPGenerator
from models.resnet import ResNetCritic, ResNetGenerator

IMAGE_MODELS = ("dcgan", "resnet", "lightweight")
POINT_MODELS = ("mlp",)
MODEL_NAMES = IMAGE_MODELS + POINT_MODELS


class ModelOptionError(ValueError):
    """A builder argument the models cannot take; `option` names it (`resolution`, `critic_norm`...)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def check_model(name: str, resolution: int, critic_norm: str = "layer", attn_resolutions: tuple[int, ...] = ()) -> None:
    """Raise ModelOptionError naming the bad value and the valid ones."""
    if name not in MODEL_NAMES:
        raise ModelOptionError("model", f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if name in IMAGE_MODELS and resolution not in IMAGE_RESOLUTIONS:
        valid = ", ".join(map(str, IMAGE_RESOLUTIONS))
        raise ModelOptionError("resolution", f"resolution {resolution} is not supported by {name!r}; choose one of {valid}")
    if critic_norm not in CRITIC_NORMS:
        raise ModelOptionError("critic_norm", f"unknown critic norm {critic_norm!r}; choose one of {', '.join(CRITIC_NORMS)}")
    if attn_resolutions and name != "lightweight":
        raise ModelOptionError("attn_resolutions", f"attention resolutions are a 'lightweight' model option, not {name!r}'s; drop them")
    valid_sizes = attention_sizes(resolution)
    for size in attn_resolutions:
        if size not in valid_sizes:
            raise ModelOptionError(
                "attn_resolutions",
                f"attention at {size} px is not possible at resolution {resolution}; choose from {', '.join(map(str, valid_sizes))}",
            )


def build_models(
    name: str,
    *,
    resolution: int,
    latent_dim: int,
    channel_base: int = 4096,
    channel_max: int = 512,
    critic_norm: str = "layer",
    mlp_hidden: int = 512,
    attn_resolutions: tuple[int, ...] = (),
) -> tuple[nn.Module, nn.Module]:
    """Return (generator, critic) for a model name; image generators emit [-1, 1] at `resolution`."""
    check_model(name, resolution, critic_norm, attn_resolutions)
    if name == "mlp":
        return MLPGenerator(latent_dim, mlp_hidden), MLPCritic(mlp_hidden)
    if name == "lightweight":
        return (
            LightweightGenerator(latent_dim, resolution, channel_base, channel_max, attn_resolutions),
            LightweightDiscriminator(resolution, channel_base, channel_max, critic_norm, attn_resolutions),
        )
    generator_cls, critic_cls = {"dcgan": (DCGANGenerator, DCGANCritic), "resnet": (ResNetGenerator, ResNetCritic)}[name]
    return (
        generator_cls(latent_dim, resolution, channel_base, channel_max),
        critic_cls(resolution, channel_base, channel_max, critic_norm),
    )
