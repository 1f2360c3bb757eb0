"""Gradient penalties on the critic's input gradients, shared by every objective.

Numerics (the reasons behind each step):
- fp16: small input gradients underflow in half precision, so the critic's output is multiplied
  by the GradScaler's scale before autograd.grad and the gradient divided by it afterwards, in fp32.
  An overflow shows up as inf/nan in the penalty, then in the parameter gradients, where the
  scaler's own check skips the optimizer step and lowers the scale.
- bf16: the gradient norm is computed in fp32 (bf16 keeps 8 bits of mantissa).
- Speed on a GPU: the critic's forward runs under train.gan.conv_grad's rewritten convolutions,
  whose double backward avoids PyTorch's feature-map-sized convolution kernels (an H200, 256 px,
  64 images: the critic phase 2.79 s -> 0.90 s in fp32 with TF32, 1.17 s -> 0.84 s in bf16). On the
  CPU PyTorch's own path is kept: there the rewrite measured 4-7% slower (64 px, one thread).
- DDP: autograd.grad(inputs=...) accumulates into no parameter, so DDP's reducer hooks fire only in
  the one backward of the total loss; never run this under static_graph. A backward of a penalty
  alone must still touch every parameter (the last bias has no input gradient): add
  `0 * scores.mean()` to it, with the scores this module returns.
"""
import torch
from torch import nn

from train.gan import conv_grad


def interpolate(real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Per-sample points on the lines between real and fake samples (WGAN-GP's x-hat)."""
    alpha = alpha.view(-1, *([1] * (real.dim() - 1))).to(real.dtype)
    return alpha * real + (1 - alpha) * fake.detach()


def input_gradients(
    critic: nn.Module, inputs: torch.Tensor, scaler: torch.amp.GradScaler | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (d critic / d inputs in fp32, critic scores), the former differentiable in the weights."""
    inputs = inputs.detach().requires_grad_(True)
    with conv_grad.for_penalty(inputs):
        scores = critic(inputs)
    # The mean, not the sum: each sample's output gradient is then scale / N, which stays inside
    # fp16's range (65504) at GradScaler's initial scale of 2**16; the factor N comes back below.
    total = scores.float().mean()
    if scaler is not None:
        # scaler.scale of a one keeps the scale a tensor: no host sync inside the critic step.
        scale = scaler.scale(torch.ones((), device=total.device))
        total = total * scale
    (grads,) = torch.autograd.grad(total, inputs, create_graph=True)
    grads = grads.float() * len(inputs)
    if scaler is not None:
        grads = grads / scale
    return grads, scores


def gradient_penalty(
    critic: nn.Module, inputs: torch.Tensor, scaler: torch.amp.GradScaler | None = None, target: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """E[(||grad D(x)||_2 - target)^2] over the batch (Gulrajani et al. 2017, eq. 3), and the scores."""
    grads, scores = input_gradients(critic, inputs, scaler)
    norms = grads.flatten(1).norm(2, dim=1)
    return (norms - target).square().mean(), scores


def zero_centred_penalty(
    critic: nn.Module, inputs: torch.Tensor, scaler: torch.amp.GradScaler | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """E[||grad D(x)||_2^2] (R1 on real inputs, Mescheder et al. 2018), and the scores."""
    grads, scores = input_gradients(critic, inputs, scaler)
    return grads.flatten(1).square().sum(1).mean(), scores
