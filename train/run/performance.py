"""Speed settings for CUDA, each behind a flag; `bench/gpu_check.py` measures each on and off.

Defaults on CUDA: TF32 matmuls (torch already runs convolutions in TF32) and fused Adam, both
well-established wins on Ampere and later; channels-last stays off until the GPU check shows it
wins for these models. torch.compile is measured by the GPU check only: it does not support the
double backward of a gradient penalty through the critic, and compiling the generator alone is
not yet shown to pay for its compile time.
"""
from collections.abc import Iterable

import torch
from torch import nn


def configure_backends(tf32: bool, device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def adam(params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float], fused: bool, device: torch.device) -> torch.optim.Adam:
    """Adam, with its fused CUDA kernel (one launch for all parameters) when asked for on a GPU."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True if fused and device.type == "cuda" else None)


def memory_format(channels_last: bool, *models: nn.Module) -> None:
    """Channels-last weights: convolutions then take and give NHWC tensors (tensor cores' layout)."""
    if channels_last:
        for model in models:
            model.to(memory_format=torch.channels_last)
