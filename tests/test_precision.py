"""train/run/precision.py: fp16 proven on the CPU, through the same scaler path the GPU takes.

torch runs fp16 autocast and a GradScaler on the CPU; Accelerate refuses fp16 there, so
`use_cpu_fp16` + `prepare` set up what Accelerate sets up on a GPU, and everything after that
(the penalty's scaling, backward, the skip on overflow, checkpoints) is the project's one path.
"""
import copy

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from models import build_models
from tests.conftest import debug_launch
from train.data import DataOptions, open_stream, parse_data_spec, to_model_input
from train.gan.objectives import WGANGP, FastGANHinge, RpGAN, ZeroCentredPenalties
from train.run.phases import Phases
from train.run.precision import (
    prepare,
    resolve_mixed_precision,
    runs_cpu_fp16,
    use_cpu_fp16,
)
from train.run.updates import DataParallelUpdates

# fp16 keeps 11 significant bits: a loss or gradient within 2% of fp32 is fp16 doing its job,
# while a penalty left scaled (x 65536, or its square) or a gradient left unscaled is off by orders.
FP16_RTOL = 2e-2


def test_fp16_on_the_cpu_runs_when_asked_for_by_name_and_falls_back_when_only_configured(monkeypatch):
    assert resolve_mixed_precision("fp16", use_cpu=True) == "fp16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.warns(UserWarning, match="fp16 needs a GPU to be fast"):
        assert resolve_mixed_precision(None, use_cpu=True) == "no"
    assert resolve_mixed_precision("bf16", use_cpu=True) == "bf16"


def _accelerator(fp16: bool, init_scale: float = 2.0**16) -> Accelerator:
    accelerator = Accelerator(cpu=True)
    accelerator.scaler = None  # the Accelerator is a fresh object, its state shared: start from fp32
    if fp16:
        use_cpu_fp16(accelerator, init_scale)
    return accelerator


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """||got - expected|| / ||expected||: fp16's rounding spreads over a tensor; a missing scale does not."""
    return ((got - expected).norm() / expected.norm().clamp(min=1e-12)).item()


def _critic_step(critic: nn.Module, fp16: bool, loss_fn) -> tuple[dict, list[torch.Tensor], torch.Tensor]:
    """One critic loss and backward, as the loop runs them; the gradients unscaled, as the optimizer sees them."""
    # 2**10: a scale this step does not overflow at (at 2**16 the first updates overflow in the
    # conv-bias sums and are skipped, as the overflow test below shows); the penalty still has to undo it.
    accelerator = _accelerator(fp16, init_scale=2.0**10)
    critic = copy.deepcopy(critic)
    optimizer = torch.optim.SGD(critic.parameters(), lr=0.0)
    critic, optimizer = prepare(accelerator, critic, optimizer)
    assert runs_cpu_fp16(accelerator) == fp16
    loss, stats = loss_fn(critic, accelerator.scaler)
    accelerator.backward(loss)
    if fp16:
        accelerator.scaler.unscale_(optimizer.optimizer)
    output_dtype = critic(loss_fn.probe).dtype
    return stats, [p.grad.clone() for p in critic.parameters()], output_dtype


def _assert_fp16_matches_fp32(critic: nn.Module, loss_fn, keys: tuple[str, ...]) -> None:
    stats32, grads32, dtype32 = _critic_step(critic, False, loss_fn)
    stats16, grads16, dtype16 = _critic_step(critic, True, loss_fn)
    assert (dtype32, dtype16) == (torch.float32, torch.float16)  # the critic really ran in half precision
    for key in keys:
        assert _relative_error(stats16[key], stats32[key]) < FP16_RTOL, (key, stats16[key], stats32[key])
    g16, g32 = torch.cat([g.flatten() for g in grads16]), torch.cat([g.flatten() for g in grads32])
    assert torch.isfinite(g16).all() and _relative_error(g16, g32) < FP16_RTOL, _relative_error(g16, g32)


def test_a_wgangp_critic_step_under_cpu_fp16_gives_the_fp32_losses_and_gradients():
    torch.manual_seed(0)
    _, critic = build_models("dcgan", resolution=64, latent_dim=8, channel_base=256, channel_max=16)
    real, fake, alpha = torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64), torch.rand(8)

    def loss_fn(critic, scaler):
        return WGANGP(gp_weight=10.0, scaler=scaler).critic_loss(critic, real, fake, alpha)

    loss_fn.probe = real[:2]
    _assert_fp16_matches_fp32(critic, loss_fn, ("d_loss", "wdist", "gp"))


def test_a_fastgan_step_with_r1_under_cpu_fp16_gives_the_fp32_losses_and_gradients():
    torch.manual_seed(0)
    _, discriminator = build_models(
        "lightweight", resolution=64, latent_dim=8, channel_base=256, channel_max=16, critic_norm="none"
    )
    real, fake = torch.rand(4, 3, 64, 64) * 2 - 1, torch.rand(4, 3, 64, 64) * 2 - 1
    draw = FastGANHinge(rng=torch.Generator().manual_seed(3)).draw_critic(4, 64, torch.device("cpu"))

    def loss_fn(critic, scaler):
        # gp_every=1: the R1 penalty is part of this very call
        return FastGANHinge(gp_weight=1.0, gp_every=1, scaler=scaler).critic_loss(critic, real, fake, draw)

    loss_fn.probe = real[:2]
    _assert_fp16_matches_fp32(discriminator, loss_fn, ("d_loss", "hinge", "recon", "gp"))


def test_an_rpgan_critic_step_with_r1_and_r2_under_cpu_fp16_gives_the_fp32_losses_and_gradients():
    torch.manual_seed(0)
    _, critic = build_models("dcgan", resolution=32, latent_dim=8, channel_base=256, channel_max=16)
    real, fake = torch.rand(8, 3, 32, 32) * 2 - 1, torch.rand(8, 3, 32, 32) * 2 - 1

    def loss_fn(critic, scaler):
        return RpGAN(penalties=ZeroCentredPenalties(r1_weight=10.0, r2_weight=10.0), scaler=scaler).critic_loss(critic, real, fake)

    loss_fn.probe = real[:2]
    _assert_fp16_matches_fp32(critic, loss_fn, ("d_loss", "pairing", "r1", "r2"))


def _toy_loop(accelerator: Accelerator, fused: bool | None = None):
    torch.manual_seed(0)
    generator, critic = build_models("mlp", resolution=64, latent_dim=2, mlp_hidden=32)
    g_opt, d_opt = (torch.optim.Adam(m.parameters(), lr=1e-3, fused=fused) for m in (generator, critic))
    prepared = prepare(accelerator, generator, critic, g_opt, d_opt)
    stream = open_stream(DataOptions(parse_data_spec("toy:8gaussians"), 64), batch_size=16, seed=0, rank=0, world_size=1)
    rng = torch.Generator().manual_seed(0)
    objective = WGANGP(gp_weight=0.1, scaler=accelerator.scaler, rng=rng)

    phases = Phases(*prepared, objective, DataParallelUpdates(accelerator, 1), lambda: to_model_input(next(stream), "cpu"),
                    lambda: torch.randn(16, 2, generator=rng), 2, 1, lambda stats: None)

    def step():
        return phases.step()

    return step, prepared


# Fused Adam (the GPU default, --fused-adam) takes the scaler's found-inf into its own kernel and
# skips there: Accelerate's step_was_skipped then said every update was made (first seen on an H200,
# bench/gpu_check.py: the scale halved 9 times, 0 updates counted as skipped). It runs on the CPU too.
@pytest.mark.parametrize("fused", [None, True], ids=["adam", "fused-adam"])
def test_a_real_fp16_overflow_is_skipped_counted_and_the_scale_recovers(fused):
    # 2**40 times a loss of order 1 overflows fp16 (max 65504) in the backward: a genuine overflow.
    accelerator = _accelerator(fp16=True, init_scale=2.0**40)
    step, (generator, critic, *_) = _toy_loop(accelerator, fused)
    before = [p.detach().clone() for p in critic.parameters()]
    results = [step() for _ in range(12)]
    skipped = sum(r.skipped_updates for r in results)
    assert results[0].skipped_updates == 3 and not results[0].generator_updated  # 2 critic + 1 generator
    assert skipped >= 3 and accelerator.scaler.get_scale() == 2.0**40 / 2**skipped  # halved once per skip
    # then normal steps: the last ones all update, and the weights moved and stayed finite
    assert all(r.skipped_updates == 0 and r.generator_updated for r in results[-3:])
    after = list(critic.parameters())
    assert all(torch.isfinite(p).all() for p in after) and not all(torch.equal(a, b) for a, b in zip(after, before))


def _ddp_fp16_matches_one_process() -> None:
    """Rank-local fp16 DDP step on half the batch vs a 1-process fp16 step on all of it."""
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2
    use_cpu_fp16(accelerator, init_scale=2.0**8)
    torch.manual_seed(0)
    _, critic = build_models("dcgan", resolution=64, latent_dim=8, channel_base=256, channel_max=16)
    reference = copy.deepcopy(critic)
    torch.manual_seed(1)
    real, fake, alpha = torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64), torch.rand(8)

    ref_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    with torch.autocast("cpu", dtype=torch.float16):
        loss, _ = WGANGP(gp_weight=10.0, scaler=ref_scaler).critic_loss(reference, real, fake, alpha)
    ref_scaler.scale(loss).backward()
    ref_grads = [p.grad / ref_scaler.get_scale() for p in reference.parameters()]

    optimizer = torch.optim.SGD(critic.parameters(), lr=0.0)
    critic, optimizer = prepare(accelerator, critic, optimizer)
    half = lambda t: t.chunk(world)[rank]  # noqa: E731
    loss, _ = WGANGP(gp_weight=10.0, scaler=accelerator.scaler).critic_loss(critic, half(real), half(fake), half(alpha))
    accelerator.backward(loss)
    accelerator.scaler.unscale_(optimizer.optimizer)
    grads = torch.cat([p.grad.flatten() for p in accelerator.unwrap_model(critic).parameters()])
    error = _relative_error(grads, torch.cat([g.flatten() for g in ref_grads]))
    assert error < 5e-3, f"rank {rank}: gradients differ by {error:.2e} of their norm"
    del critic, optimizer
    accelerator.free_memory()
    accelerator.end_training()


@pytest.mark.slow
def test_ddp_on_two_gloo_processes_under_fp16_equals_one_process():
    debug_launch(f"{__name__}:_ddp_fp16_matches_one_process")
