"""Generator/critic pairs by name: the one place that maps a name and a resolution to modules."""
import dataclasses
from typing import Any

from torch import nn

from models.dcgan import DCGAN_CHOICES, PROJECT_NETWORKS, DCGANCritic, DCGANGenerator, DCGANOptions
from models.layers import (
    CRITIC_NORMS,
    IMAGE_RESOLUTIONS,
    PER_SAMPLE_NORMS,
    spectral_normed,
)
from models.lightweight import (
    LightweightDiscriminator,
    LightweightGenerator,
    attention_sizes,
)
from models.mlp import MLPCritic, MLPGenerator
from models.published import LAYER_SWITCHES, PUBLISHED, PublishedCritic, PublishedGenerator
from models.resnet import ResNetCritic, ResNetGenerator

IMAGE_MODELS = ("dcgan", "resnet", "lightweight")
POINT_MODELS = ("mlp",)
MODEL_NAMES = IMAGE_MODELS + POINT_MODELS


class ModelOptionError(ValueError):
    """A builder argument the models cannot take; `option` names it (`resolution`, `critic_norm`...)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Everything that shapes a generator/critic pair, as one value from the flags to the modules.

    `dcgan` holds the 'dcgan' pair's own switches; `attn_resolutions` is the 'lightweight' pair's;
    spectral norm is for every model; `pack` > 1 makes the critic score packs of that many
    consecutive samples (all but 'lightweight')."""

    name: str
    resolution: int
    latent_dim: int
    channel_base: int = 4096
    channel_max: int = 512
    critic_norm: str = "layer"
    mlp_hidden: int = 512
    attn_resolutions: tuple[int, ...] = ()
    dcgan: DCGANOptions = DCGANOptions()
    g_spectral_norm: bool = False
    d_spectral_norm: bool = False
    pack: int = 1


def check_model(options: ModelOptions) -> None:
    """Raise ModelOptionError naming the bad value and the valid ones."""
    name, resolution, critic_norm, pack = options.name, options.resolution, options.critic_norm, options.pack
    attn_resolutions = options.attn_resolutions
    if name not in MODEL_NAMES:
        raise ModelOptionError("model", f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if name in IMAGE_MODELS and resolution not in IMAGE_RESOLUTIONS:
        valid = ", ".join(map(str, IMAGE_RESOLUTIONS))
        raise ModelOptionError("resolution", f"resolution {resolution} is not supported by {name!r}; choose one of {valid}")
    # The 'dcgan' switches first: a --networks preset on another model sets a critic norm of its own too.
    check_dcgan_options(name, options.dcgan)
    check_published(options)
    if critic_norm not in CRITIC_NORMS:
        raise ModelOptionError("critic_norm", f"unknown critic norm {critic_norm!r}; choose one of {', '.join(CRITIC_NORMS)}")
    if critic_norm not in PER_SAMPLE_NORMS and name != "dcgan":
        raise ModelOptionError(
            "critic_norm",
            f"critic norm {critic_norm!r} is a 'dcgan' model option, not {name!r}'s (it couples the samples of a batch);"
            f" choose one of {', '.join(PER_SAMPLE_NORMS)}",
        )
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise ModelOptionError("pack", f"pack {pack!r} is not a number of samples; choose a whole number >= 1 (1: no packing)")
    if pack > 1 and name == "lightweight":
        raise ModelOptionError(
            "pack",
            "packing is not possible for 'lightweight': its discriminator reconstructs each real image from that"
            " image's own features; use pack 1",
        )
    if attn_resolutions and name != "lightweight":
        raise ModelOptionError("attn_resolutions", f"attention resolutions are a 'lightweight' model option, not {name!r}'s; drop them")
    valid_sizes = attention_sizes(resolution)
    for size in attn_resolutions:
        if size not in valid_sizes:
            raise ModelOptionError(
                "attn_resolutions",
                f"attention at {size} px is not possible at resolution {resolution}; choose from {', '.join(map(str, valid_sizes))}",
            )


def check_dcgan_options(name: str, options: DCGANOptions) -> None:
    for option, choices in DCGAN_CHOICES.items():
        value = getattr(options, option)
        if value not in choices:
            raise ModelOptionError(option, f"unknown {option} {value!r}; choose one of {', '.join(choices)}")
    for option in ("g_dropout", "d_dropout"):
        value = getattr(options, option)
        if not 0 <= value < 1:
            raise ModelOptionError(option, f"{option} {value} is not a dropout probability; choose a value in [0, 1) (0: off)")
    changed = options.changed()
    if name != "dcgan" and changed:
        option = changed[0]
        default = next(f.default for f in dataclasses.fields(options) if f.name == option)
        raise ModelOptionError(
            option,
            f"{option}={getattr(options, option)!r} is a 'dcgan' model option, not {name!r}'s; leave it at its default {default!r}",
        )


def check_published(options: ModelOptions) -> None:
    """A published pair (models/published.py) at its own resolution, its layers left as the reference's."""
    networks = options.dcgan.networks
    if networks == PROJECT_NETWORKS:
        return
    layout = PUBLISHED[networks]
    if options.resolution != layout.resolution:
        raise ModelOptionError(
            "networks",
            f"the {networks!r} networks ({layout.source} in fjxmlzn/PacGAN) make {layout.resolution} px images, not"
            f" {options.resolution}; set resolution {layout.resolution} (Stacked MNIST's), or use networks"
            f" {PROJECT_NETWORKS!r} at {options.resolution} px",
        )
    defaults = DCGANOptions()
    for option in LAYER_SWITCHES:
        value, default = getattr(options.dcgan, option), getattr(defaults, option)
        if value != default:
            raise ModelOptionError(
                option,
                f"{option}={value!r} reshapes layers that the {networks!r} networks take from the reference code;"
                f" leave it at its default {default!r}, or use networks {PROJECT_NETWORKS!r}",
            )


def build_models(name: str, **options: Any) -> tuple[nn.Module, nn.Module]:
    """build_pair(ModelOptions(name, **options)): ModelOptions refuses a name it does not have."""
    return build_pair(ModelOptions(name, **options))


def build_pair(options: ModelOptions) -> tuple[nn.Module, nn.Module]:
    """Return (generator, critic); image generators emit [-1, 1] at `options.resolution`."""
    check_model(options)
    # Generator first, as always: with a fixed seed its initial weights do not depend on the critic's options.
    if options.name == "mlp":
        generator, critic = MLPGenerator(options.latent_dim, options.mlp_hidden), MLPCritic(options.mlp_hidden, options.pack)
    elif options.name == "lightweight":
        generator = LightweightGenerator(options.latent_dim, options.resolution, options.channel_base, options.channel_max, options.attn_resolutions)
        critic = LightweightDiscriminator(options.resolution, options.channel_base, options.channel_max, options.critic_norm, options.attn_resolutions)
    elif options.name == "resnet":
        generator = ResNetGenerator(options.latent_dim, options.resolution, options.channel_base, options.channel_max)
        critic = ResNetCritic(options.resolution, options.channel_base, options.channel_max, options.critic_norm, options.pack)
    elif options.dcgan.networks != PROJECT_NETWORKS:
        layout, switches = PUBLISHED[options.dcgan.networks], options.dcgan
        generator = PublishedGenerator(layout, options.latent_dim, switches.g_norm, switches.conv_bias, switches.dcgan_init)
        critic = PublishedCritic(layout, options.critic_norm, switches.d_first_norm, switches.conv_bias, switches.dcgan_init, options.pack)
    else:
        generator = DCGANGenerator(options.latent_dim, options.resolution, options.channel_base, options.channel_max, options.dcgan)
        critic = DCGANCritic(options.resolution, options.channel_base, options.channel_max, options.critic_norm, options.dcgan, options.pack)
    if options.g_spectral_norm:
        spectral_normed(generator)
    if options.d_spectral_norm:
        spectral_normed(critic)
    return generator, critic
