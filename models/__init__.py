"""Pure nn.Modules: generator/critic pairs built from a name and a resolution; no training logic."""
from models.dcgan import DCGAN_CHOICES, DCGAN_SWITCHES, DCGANOptions
from models.layers import CRITIC_NORMS, IMAGE_RESOLUTIONS, PER_SAMPLE_NORMS
from models.registry import (
    IMAGE_MODELS,
    MODEL_NAMES,
    POINT_MODELS,
    ModelOptionError,
    ModelOptions,
    build_models,
    build_pair,
    check_model,
)

__all__ = [
    "CRITIC_NORMS",
    "DCGAN_CHOICES",
    "DCGAN_SWITCHES",
    "IMAGE_MODELS",
    "IMAGE_RESOLUTIONS",
    "MODEL_NAMES",
    "PER_SAMPLE_NORMS",
    "POINT_MODELS",
    "DCGANOptions",
    "ModelOptionError",
    "ModelOptions",
    "build_models",
    "build_pair",
    "check_model",
]
