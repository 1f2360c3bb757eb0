"""Pure nn.Modules: generator/critic pairs built from a name and a resolution; no training logic."""
from models.layers import CRITIC_NORMS, IMAGE_RESOLUTIONS
from models.registry import (
    IMAGE_MODELS,
    MODEL_NAMES,
    POINT_MODELS,
    ModelOptionError,
    build_models,
    check_model,
)

__all__ = ["CRITIC_NORMS", "IMAGE_MODELS", "IMAGE_RESOLUTIONS", "MODEL_NAMES", "POINT_MODELS", "ModelOptionError", "build_models", "check_model"]
