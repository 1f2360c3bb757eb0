"""A 2-D convolution whose input gradient is twice differentiable through ordinary convolutions.

Why: a gradient penalty differentiates the critic's input gradient in the weights. PyTorch's own
double backward of a convolution computes that weight term as a convolution of the transposed
input with the transposed output gradient, whose "kernel" is as large as the feature map (256x256
for a 256-px critic's first layers). cuDNN has no fast kernel for such shapes: on an H200 one of
them took 94 ms a call, 65% of the GPU time of a 256-px WGAN-GP step in fp32 (MFU 1.1%).

Here the first backward is written with differentiable operations: the input gradient is
`conv_transpose2d(grad_out, weight)`, so the second backward is that transposed convolution's own
backward (cuDNN's ordinary backward-filter and forward kernels), with the same result.
`penalty_convolutions()` routes every `F.conv2d` of a critic's forward through it; the penalty
(train.gan.penalty) runs its critic forward inside `for_penalty(inputs)`: the rewrite on a GPU,
PyTorch's own path on the CPU (where the rewrite measured 4-7% slower). `rewrite(on)` forces
either, for benchmarks and tests.
"""
import contextlib

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

_CONV2D = {F.conv2d, torch.conv2d}
_forced: bool | None = None  # rewrite(): None is the automatic choice (for_penalty)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class _Conv2d(torch.autograd.Function):
    """F.conv2d with a hand-written, differentiable backward (see the module docstring)."""

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.dilation, ctx.groups = _pair(stride), _pair(padding), _pair(dilation), groups
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.stride, ctx.padding, ctx.dilation, ctx.groups
        dtype = grad_out.dtype  # the forward's compute dtype (bf16/fp16 under autocast)
        grad_x = grad_weight = grad_bias = None
        # The casts are explicit, and autocast off: this runs the same with or without an outer autocast.
        with torch.autocast(grad_out.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                kernel = weight.shape[2:]
                output_padding = [x.shape[2 + i] - ((grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1)
                                  for i in range(2)]
                grad_x = F.conv_transpose2d(grad_out, weight.to(dtype), None, stride, padding, output_padding, groups, dilation)
            if _will_run(ctx, 1):  # not in the penalty's own autograd.grad (inputs only): a wasted convolution there
                grad_weight = torch.ops.aten.convolution_backward(
                    grad_out, x.to(dtype), weight.to(dtype), None, stride, padding, dilation, False, [0, 0], groups,
                    [False, True, False])[1]
            if ctx.has_bias and _will_run(ctx, 2):
                grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None, None


def _will_run(ctx, index: int) -> bool:
    """Whether this backward's gradient for input `index` is used: asked for (needs_input_grad) and,
    within this backward call, on the engine's path (an autograd.grad of the inputs alone leaves the
    weights' out). Without that engine query (a private torch API): whenever asked for."""
    if not ctx.needs_input_grad[index]:
        return False
    node = ctx.next_functions[index][0]
    try:
        return node is None or torch._C._will_engine_execute_node(node)
    except (AttributeError, RuntimeError):
        return True


class _PenaltyConvolutions(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONV2D:
            call = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args)) | kwargs
            padding = call.get("padding", 0)
            if not isinstance(padding, str) and call["input"].dim() == 4:
                return _Conv2d.apply(call["input"], call["weight"], call.get("bias"), call.get("stride", 1), padding,
                                     call.get("dilation", 1), call.get("groups", 1))
        return func(*args, **kwargs)


def penalty_convolutions() -> contextlib.AbstractContextManager:
    """Inside: every 2-D convolution (nn.Conv2d, F.conv2d) is _Conv2d; same values and gradients."""
    return _PenaltyConvolutions()


def for_penalty(inputs: torch.Tensor) -> contextlib.AbstractContextManager:
    """The context of a penalty's critic forward on `inputs`: the rewrite on CUDA, PyTorch's own
    double backward elsewhere, unless `rewrite` forces one."""
    on = inputs.is_cuda if _forced is None else _forced
    return penalty_convolutions() if on else contextlib.nullcontext()


@contextlib.contextmanager
def rewrite(on: bool | None):
    """Within: every penalty takes the rewrite (True) or PyTorch's path (False); None: the automatic
    choice. For benchmarks and tests (bench/gpu_check.py measures both on a GPU)."""
    global _forced
    before, _forced = _forced, on
    try:
        yield
    finally:
        _forced = before
