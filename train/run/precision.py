"""Choosing the mixed precision a run can actually use on its hardware."""
import os
import warnings

import torch

PRECISIONS = ("no", "fp16", "bf16")  # what --mixed-precision and ACCELERATE_MIXED_PRECISION may say


def resolve_mixed_precision(requested: str | None, use_cpu: bool) -> str:
    """The flag, else the accelerate config (ACCELERATE_MIXED_PRECISION), downgraded where it would not run well."""
    precision = requested or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision == "fp16" and use_cpu:
        warnings.warn("fp16 needs a GPU (GradScaler and fast half kernels); training on the CPU in fp32", stacklevel=2)
        return "no"
    if precision == "bf16" and not use_cpu and not torch.cuda.is_bf16_supported(including_emulation=False):
        # Pre-Ampere GPUs (T4, V100) only emulate bf16: slower than fp16 and no more stable.
        warnings.warn(f"{torch.cuda.get_device_name()} has no native bf16; training in fp16 instead", stacklevel=2)
        return "fp16"
    return precision
