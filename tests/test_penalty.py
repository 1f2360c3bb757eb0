"""train/gan/penalty.py: the gradient penalties, exact on known critics and under loss scaling."""
import pytest
import torch
from torch import nn

from train.gan.penalty import (
    gradient_penalty,
    input_gradients,
    interpolate,
    zero_centred_penalty,
)


def linear_critic(weight: torch.Tensor) -> nn.Linear:
    critic = nn.Linear(weight.numel(), 1)
    with torch.no_grad():
        critic.weight.copy_(weight.view(1, -1))
        critic.bias.fill_(0.3)
    return critic


class FlatLinear(nn.Module):
    """A linear critic on images: D(x) = <w, x> + b, so grad_x D = w for every sample."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.linear = linear_critic(weight.flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).flatten()


def test_gradient_penalty_of_a_linear_critic_is_the_analytic_value():
    weight = torch.tensor([3.0, 4.0])  # ||w|| = 5
    critic = linear_critic(weight)
    penalty, scores = gradient_penalty(critic, torch.randn(16, 2))
    assert penalty.item() == pytest.approx((5.0 - 1.0) ** 2, rel=1e-6)
    assert scores.shape == (16, 1)


def test_gradient_penalty_on_images_uses_the_per_sample_norm_over_all_pixels():
    weight = torch.full((3, 4, 4), 0.1)  # ||w|| = 0.1 * sqrt(48)
    penalty, _ = gradient_penalty(FlatLinear(weight), torch.randn(8, 3, 4, 4))
    assert penalty.item() == pytest.approx((0.1 * 48**0.5 - 1) ** 2, rel=1e-5)


def test_zero_centred_penalty_of_a_linear_critic_is_the_squared_norm():
    penalty, _ = zero_centred_penalty(linear_critic(torch.tensor([3.0, 4.0])), torch.randn(16, 2))
    assert penalty.item() == pytest.approx(25.0, rel=1e-6)


def test_penalty_trains_the_critic_through_a_second_derivative():
    critic = linear_critic(torch.tensor([3.0, 4.0]))
    penalty, _ = gradient_penalty(critic, torch.randn(16, 2))
    penalty.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    expected = 2 * (5.0 - 1.0) * torch.tensor([3.0, 4.0]) / 5.0
    torch.testing.assert_close(critic.weight.grad.flatten(), expected)
    assert critic.bias.grad is None or critic.bias.grad.abs().item() == 0.0


def test_interpolates_lie_between_real_and_fake_per_sample():
    real, fake = torch.zeros(4, 3, 2, 2), torch.ones(4, 3, 2, 2)
    alpha = torch.tensor([0.0, 0.25, 0.5, 1.0])
    mixed = interpolate(real, fake, alpha)
    torch.testing.assert_close(mixed.mean(dim=(1, 2, 3)), 1 - alpha)


def small_critic() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def test_scaled_penalty_equals_the_fp32_penalty():
    critic, inputs = small_critic(), torch.randn(32, 2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    plain, _ = gradient_penalty(critic, inputs)
    scaled, _ = gradient_penalty(critic, inputs, scaler=scaler)
    torch.testing.assert_close(scaled, plain, rtol=1e-6, atol=0)
    params = list(critic.parameters())
    plain_grads = torch.autograd.grad(plain, params, allow_unused=True, materialize_grads=True)
    scaled_grads = torch.autograd.grad(scaled, params, allow_unused=True, materialize_grads=True)
    for scaled_grad, plain_grad in zip(scaled_grads, plain_grads):
        torch.testing.assert_close(scaled_grad, plain_grad, rtol=1e-5, atol=1e-8)


def test_scaling_rescues_input_gradients_that_underflow_in_fp16():
    """Under fp16 autocast a tiny critic gradient flushes to zero unless the output is scaled first."""
    critic = nn.Sequential(nn.Linear(2, 16), nn.Linear(16, 1))
    with torch.no_grad():
        critic[0].weight.fill_(1e-5)
        critic[1].weight.fill_(1e-5)  # input gradient 16 * 1e-10 per element: below fp16's 6e-8 subnormal
    inputs = torch.randn(8, 2)
    exact, _ = input_gradients(critic, inputs)
    with torch.autocast("cpu", dtype=torch.float16):
        unscaled, _ = input_gradients(critic, inputs)
        scaled, _ = input_gradients(critic, inputs, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    assert unscaled.abs().max().item() == 0.0
    torch.testing.assert_close(scaled, exact, rtol=2e-2, atol=0)


def test_a_non_finite_scaled_penalty_skips_the_optimizer_step():
    critic, inputs = small_critic(), torch.randn(32, 2)
    with torch.no_grad():
        critic[-1].weight.mul_(1e3)  # input gradients of order 10..100
    optimizer = torch.optim.SGD(critic.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**126)  # scaled by it, the gradient overflows fp32
    before = [p.detach().clone() for p in critic.parameters()]
    penalty, _ = gradient_penalty(critic, inputs, scaler=scaler)
    assert not torch.isfinite(penalty)
    scaler.scale(penalty).backward()
    scaler.step(optimizer)
    scaler.update()
    for param, old in zip(critic.parameters(), before):
        torch.testing.assert_close(param.detach(), old, rtol=0, atol=0)
    assert scaler.get_scale() < 2.0**126
