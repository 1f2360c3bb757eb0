"""train/gan/conv_grad.py: the penalty's convolutions, rewritten so that their double backward
avoids PyTorch's feature-map-sized "kernels", give PyTorch's own values, input gradients and
penalty gradients in the weights, for every convolution shape the models use and under autocast."""
import contextlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from train.gan import conv_grad
from train.gan.conv_grad import penalty_convolutions
from train.gan.penalty import gradient_penalty


def critic(seed: int = 0) -> nn.Module:
    """Stride 1 and 2, an even kernel, odd sizes (output padding), groups, dilation, no bias,
    reflect padding (F.pad, then conv2d), spectral norm (a computed weight), and a Linear."""
    torch.manual_seed(seed)
    spectral = nn.utils.parametrizations.spectral_norm(nn.Conv2d(16, 16, 3, 2, 1, groups=2))
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1, padding_mode="reflect"), nn.LeakyReLU(0.2),
        nn.Conv2d(8, 16, 4, 2, 1), nn.LeakyReLU(0.2),
        spectral, nn.LeakyReLU(0.2),
        nn.Conv2d(16, 8, 3, 1, 2, dilation=2, bias=False), nn.LeakyReLU(0.2),
        nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 1),
    )


def penalty_and_gradients(rewrite: bool, autocast: torch.dtype | None = None, device: str = "cpu"):
    """The penalty, the scores and the weights' gradients of `critic()`, with the rewrite or with
    PyTorch's own double backward (conv_grad.rewrite: the penalty's automatic choice set aside)."""
    model = critic().train(False).to(device)  # spectral norm's power iteration fixed: both runs see one weight
    inputs = torch.randn(4, 3, 17, 17, generator=torch.Generator().manual_seed(1)).to(device)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10) if autocast == torch.float16 else None
    with conv_grad.rewrite(rewrite), torch.autocast(device, dtype=autocast) if autocast else contextlib.nullcontext():
        penalty, scores = gradient_penalty(model, inputs, scaler)
    (penalty + 0 * scores.float().mean()).backward()
    return penalty.detach(), scores.detach(), [p.grad.clone() for p in model.parameters()]


def worst_relative(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    return max(((g - e).abs().max() / e.abs().max()).item() for g, e in zip(got, expected))


# The same sums in other orders. Measured (torch 2.14, CPU): fp32 9.8e-7, bf16 5.9e-4, fp16 7.4e-4
# of each weight's largest gradient; the penalty itself equal to the bit.
@pytest.mark.parametrize("autocast,bound", [(None, 1e-5), (torch.bfloat16, 5e-3), (torch.float16, 5e-3)],
                         ids=["fp32", "bf16", "fp16"])
def test_the_rewrite_gives_pytorchs_penalty_and_gradients(autocast, bound):
    penalty, scores, grads = penalty_and_gradients(True, autocast)
    expected_penalty, expected_scores, expected_grads = penalty_and_gradients(False, autocast)
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=0)  # the forward is F.conv2d itself
    assert abs(penalty - expected_penalty) <= bound * abs(expected_penalty)
    assert worst_relative(grads, expected_grads) <= bound


# Measured (torch 2.14, CPU, fp32, 64 px, 2 images): ResNet 4.4e-6, DCGAN 1.2e-6, lightweight 1.1e-6,
# DCGAN with spectral norm 1.0e-6 of each weight's largest gradient.
@pytest.mark.parametrize("name,options", [
    ("resnet", {"critic_norm": "layer"}), ("dcgan", {"critic_norm": "layer", "d_spectral_norm": True}),
    ("lightweight", {"critic_norm": "none", "attn_resolutions": (8,)}),
], ids=["resnet", "dcgan-spectral-norm", "lightweight-attention"])
def test_every_critic_of_the_project_gets_pytorchs_penalty_gradients_through_the_rewrite(name, options):
    from models import build_models

    grads = []
    for rewrite in (True, False):
        torch.manual_seed(0)
        _, model = build_models(name, resolution=64, latent_dim=8, channel_base=256, channel_max=16, **options)
        model.train(False)  # spectral norm's power iteration fixed: both runs see one weight
        inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with conv_grad.rewrite(rewrite):
            penalty, scores = gradient_penalty(model, inputs)
        (penalty + 0 * scores.float().mean()).backward()
        grads.append([p.grad for p in model.parameters()])
    # The same parameters reached either way (the lightweight critic's decoders are not, by the penalty).
    assert [g is None for g in grads[0]] == [g is None for g in grads[1]] and any(g is not None for g in grads[0])
    assert worst_relative(*([g for g in way if g is not None] for way in grads)) <= 2e-5


def test_every_convolution_of_the_critic_goes_through_the_rewrite():
    """Its double backward has no convolution whose weight is a feature map (PyTorch's path has one
    per layer: weight [C_out, batch, H, W])."""
    from torch.profiler import ProfilerActivity, profile, record_function

    def feature_map_kernels(rewrite: bool) -> int:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof, record_function("step"):
            penalty_and_gradients(rewrite)
        shapes = [e.input_shapes for e in prof.events() if e.name == "aten::convolution"]
        return sum(1 for s in shapes if len(s) > 1 and len(s[1]) == 4 and s[1][1] == 4 and s[1][2] >= 4)

    assert feature_map_kernels(False) >= 4  # the path this avoids, seen by this very count
    assert feature_map_kernels(True) == 0


def test_the_penalty_chooses_the_rewrite_on_a_gpu_only_unless_forced():
    cpu = torch.zeros(1)
    assert not isinstance(conv_grad.for_penalty(cpu), type(penalty_convolutions()))
    with conv_grad.rewrite(True):
        assert isinstance(conv_grad.for_penalty(cpu), type(penalty_convolutions()))
        with conv_grad.rewrite(None):
            assert not isinstance(conv_grad.for_penalty(cpu), type(penalty_convolutions()))
    assert not isinstance(conv_grad.for_penalty(torch.zeros(1, device="meta")), type(penalty_convolutions()))


def test_other_operations_and_string_padding_pass_through_unchanged():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with penalty_convolutions():
        same = F.conv2d(x, w, padding="same")
        one_d = F.conv1d(torch.randn(2, 3, 8), torch.randn(4, 3, 3))
        product = x @ x.transpose(-1, -2)
    assert same.grad_fn is None and one_d.shape == (2, 4, 6) and product.shape == (2, 3, 8, 8)
    torch.testing.assert_close(same, F.conv2d(x, w, padding="same"))
