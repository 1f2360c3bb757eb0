"""Choosing the mixed precision a run can actually use on its hardware, and setting it up."""
import os
import warnings
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # --help and argument errors must not pay for importing accelerate
    from accelerate import Accelerator

PRECISIONS = ("no", "fp16", "bf16")  # what --mixed-precision and ACCELERATE_MIXED_PRECISION may say


def resolve_mixed_precision(requested: str | None, use_cpu: bool) -> str:
    """The flag, else the accelerate config (ACCELERATE_MIXED_PRECISION), downgraded where it would not run well.

    fp16 on a CPU runs only when the flag asks for it by name (torch's CPU autocast and GradScaler:
    slow, but the same scaler path as on a GPU, for checking an fp16 setup without one); an
    accelerate config's fp16 on a CPU falls back to fp32."""
    precision = requested or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision == "fp16" and use_cpu and not requested:
        warnings.warn(
            "fp16 needs a GPU to be fast; training on the CPU in fp32 (--mixed-precision fp16 runs torch's slow CPU fp16)",
            stacklevel=2,
        )
        return "no"
    if precision == "bf16" and not use_cpu and not torch.cuda.is_bf16_supported(including_emulation=False):
        # Pre-Ampere GPUs (T4, V100) only emulate bf16: slower than fp16 and no more stable.
        warnings.warn(f"{torch.cuda.get_device_name()} has no native bf16; training in fp16 instead", stacklevel=2)
        return "fp16"
    return precision


def accelerate_precision(precision: str, use_cpu: bool) -> str:
    """What Accelerate is told: it refuses fp16 on a CPU, which `use_cpu_fp16` then sets up."""
    return "no" if precision == "fp16" and use_cpu else precision


def use_cpu_fp16(accelerator: "Accelerator", init_scale: float = 2.0**16) -> None:
    """fp16 on a CPU (Accelerate 1.x refuses it): torch's own GradScaler, which Accelerate then uses
    everywhere it uses its own (backward, the prepared optimizers' step, checkpoints). Call before
    `prepare`; `prepare_models` adds the autocast."""
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)


def runs_cpu_fp16(accelerator: "Accelerator") -> bool:
    return accelerator.scaler is not None and accelerator.device.type == "cpu"


def prepare(accelerator: "Accelerator", *objects):
    """`accelerator.prepare`, plus, under CPU fp16, the fp16 autocast around each model's forward
    that Accelerate adds itself on a GPU: one code path for both."""
    if runs_cpu_fp16(accelerator):
        for model in objects:
            if isinstance(model, torch.nn.Module):
                model.forward = torch.autocast("cpu", dtype=torch.float16)(model.forward)
    return accelerator.prepare(*objects)
