"""train/gan/objectives.py: the WGAN-GP, FastGAN, RpGAN and non-saturating losses with R1/R2, and
their gradients under DDP on 2 gloo processes."""
import copy
import math

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.nn import functional as F

from models import build_models
from models.lightweight import NoiseInjection, crop_quarter
from tests.conftest import LaunchedCases, debug_launch_cases
from train.gan.diffaugment import DiffAugment
from train.gan.objectives import WGANGP, FastGANHinge, NonSaturating, RpGAN, ZeroCentredPenalties
from train.gan.penalty import zero_centred_penalty

GLOBAL_BATCH = 8
TOLERANCE = 1e-5
# The DDP checks' images: the smallest size the image pairs build, 'resnet' still with 3 residual
# blocks each way; at 64 px its penalties' double backward cost about 4 times as much, proving no more.
RESOLUTION = 32


class Linear2D(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.6, 0.8]]))  # unit norm: zero penalty
            self.linear.bias.fill_(0.5)

    def forward(self, x):
        return self.linear(x).flatten()


def test_critic_loss_is_fake_minus_real_plus_weighted_penalty():
    critic = Linear2D()
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    loss, stats = WGANGP(gp_weight=10.0).critic_loss(critic, real, fake)
    w = torch.tensor([0.6, 0.8])
    wdist = (real @ w).mean() - (fake @ w).mean()
    torch.testing.assert_close(stats["wdist"], wdist)
    torch.testing.assert_close(stats["gp"], torch.tensor(0.0), atol=1e-10, rtol=0)
    torch.testing.assert_close(loss, -wdist)
    with torch.no_grad():
        critic.linear.weight.mul_(3.0)  # norm 3: penalty (3 - 1)^2 = 4
    loss, stats = WGANGP(gp_weight=10.0).critic_loss(critic, real, fake)
    torch.testing.assert_close(stats["gp"], torch.tensor(4.0))
    torch.testing.assert_close(loss, -stats["wdist"] + 40.0)


def test_generator_loss_is_minus_the_mean_fake_score():
    critic = Linear2D()
    fake = torch.randn(16, 2)
    loss, stats = WGANGP().generator_loss(critic, fake)
    torch.testing.assert_close(loss, -critic(fake).mean())
    torch.testing.assert_close(stats["g_loss"], loss.detach())


def test_critic_loss_draws_interpolation_weights_from_its_own_generator():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1))
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    first = WGANGP(rng=torch.Generator().manual_seed(5)).critic_loss(critic, real, fake)[0]
    again = WGANGP(rng=torch.Generator().manual_seed(5)).critic_loss(critic, real, fake)[0]
    other = WGANGP(rng=torch.Generator().manual_seed(6)).critic_loss(critic, real, fake)[0]
    assert first.item() == again.item()
    assert first.item() != other.item()


# --- RpGAN, R1/R2 and the non-saturating loss with R1 ----------------------------------------

def test_rpgan_losses_are_softplus_of_the_paired_score_differences():
    critic = Linear2D()  # D(x) = 0.6 x0 + 0.8 x1 + 0.5
    real, fake = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    # D(real) = (1.1, 1.3), D(fake) = (0.5, 1.7): differences 0.6 and -0.4
    objective = RpGAN()
    loss, stats = objective.critic_loss(critic, real, fake)
    expected_critic = (math.log1p(math.exp(-0.6)) + math.log1p(math.exp(0.4))) / 2
    assert loss.item() == pytest.approx(expected_critic, rel=1e-6) and "r1" not in stats
    loss, _ = objective.generator_loss(critic, fake)  # paired with the critic phase's real batch
    assert loss.item() == pytest.approx((math.log1p(math.exp(0.6)) + math.log1p(math.exp(-0.4))) / 2, rel=1e-6)


def _tanh_critic() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1), nn.Flatten(0))


def _direct_penalty(critic: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    inputs = inputs.clone().requires_grad_(True)
    (grads,) = torch.autograd.grad(critic(inputs).sum(), inputs)
    return grads.square().sum(1).mean()


def test_r1_and_r2_are_half_gamma_times_the_squared_input_gradient_norms_by_direct_autograd():
    critic = _tanh_critic()
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    objective = RpGAN(penalties=ZeroCentredPenalties(r1_weight=4.0, r2_weight=6.0))
    loss, stats = objective.critic_loss(critic, real, fake)
    r1, r2 = _direct_penalty(critic, real), _direct_penalty(critic, fake)
    torch.testing.assert_close(stats["r1"], r1)
    torch.testing.assert_close(stats["r2"], r2)
    torch.testing.assert_close(loss, stats["pairing"] + 2.0 * r1 + 3.0 * r2)


def test_non_saturating_loss_with_r1_adds_half_gamma_r1_to_the_cross_entropy():
    critic = _tanh_critic()
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    plain, _ = NonSaturating().critic_loss(critic, real, fake)
    loss, stats = NonSaturating(penalties=ZeroCentredPenalties(r1_weight=10.0)).critic_loss(critic, real, fake)
    torch.testing.assert_close(stats["r1"], _direct_penalty(critic, real))
    torch.testing.assert_close(loss, plain + 5.0 * stats["r1"])
    assert "r2" not in stats and stats["d_loss"] == loss.detach()


def _models(name: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return build_models(name, resolution=RESOLUTION, latent_dim=8, channel_base=512, channel_max=16, mlp_hidden=64)


def _global_batch(name: str, generator: nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    shape = (GLOBAL_BATCH, 2) if name == "mlp" else (GLOBAL_BATCH, 3, RESOLUTION, RESOLUTION)
    batch = {
        "real": torch.randn(shape),
        "z_critic": torch.randn(GLOBAL_BATCH, 8),
        "z_generator": torch.randn(GLOBAL_BATCH, 8),
        "alpha": torch.rand(GLOBAL_BATCH),
    }
    with torch.no_grad():
        batch["fake"] = generator(batch["z_critic"])
    return batch


def _max_difference(model: nn.Module, reference: nn.Module) -> float:
    """Largest gradient difference, relative to the tensor's largest gradient when that exceeds 1
    (float32 sums in another order differ in the 7th significant digit)."""
    return max(
        ((p.grad - r.grad).abs().max() / r.grad.abs().max().clamp(min=1.0)).item()
        for p, r in zip(model.parameters(), reference.parameters())
    )


def _critic_loss(objective, critic: nn.Module, batch: dict[str, torch.Tensor]):
    extra = (batch["alpha"],) if isinstance(objective, WGANGP) else ()
    return objective.critic_loss(critic, batch["real"], batch["fake"], *extra)


def _generator_loss(objective, critic: nn.Module, fake: torch.Tensor, batch: dict[str, torch.Tensor]):
    # RpGAN pairs each fake with the real sample of the same index: this (micro-)batch's
    extra = (batch["real"],) if isinstance(objective, RpGAN) else ()
    return objective.generator_loss(critic, fake, *extra)


def _ddp_step_matches_full_batch(name: str, micro_batches: int) -> None:
    """On each rank, for WGAN-GP and for RpGAN with R1 and R2: a 1-process reference on the global
    batch, then the DDP step on this rank's half (split into micro-batches with no_sync, as the loop
    does); their gradients must agree."""
    for objective in (WGANGP(gp_weight=10.0), RpGAN(penalties=ZeroCentredPenalties(r1_weight=2.0, r2_weight=3.0))):
        _ddp_objective_step_matches_full_batch(name, micro_batches, objective)


def _ddp_objective_step_matches_full_batch(name: str, micro_batches: int, objective) -> None:
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2
    generator, critic = _models(name)
    # BatchNorm statistics are per rank on CPU (SyncBatchNorm is GPU-only): compare DDP's gradient
    # averaging with the generator's normalisation fixed, i.e. in eval mode, on both sides.
    generator.eval()
    ref_generator, ref_critic = copy.deepcopy(generator), copy.deepcopy(critic)
    batch = _global_batch(name, ref_generator)

    loss, _ = _critic_loss(objective, ref_critic, batch)
    loss.backward()
    ref_critic.requires_grad_(False)
    _generator_loss(objective, ref_critic, ref_generator(batch["z_generator"]), batch)[0].backward()

    generator, critic = accelerator.prepare(generator, critic)
    assert not critic.static_graph
    local = {k: v.chunk(world)[rank] for k, v in batch.items()}
    micro = {k: v.chunk(micro_batches) for k, v in local.items()}
    for i in range(micro_batches):
        sync = accelerator.no_sync(critic) if i < micro_batches - 1 else torch.enable_grad()
        with sync:
            loss, _ = _critic_loss(objective, critic, {k: v[i] for k, v in micro.items()})
            accelerator.backward(loss / micro_batches)
    critic.requires_grad_(False)
    for i in range(micro_batches):
        sync = accelerator.no_sync(generator) if i < micro_batches - 1 else torch.enable_grad()
        with sync:
            loss, _ = _generator_loss(objective, critic, generator(micro["z_generator"][i]), {k: v[i] for k, v in micro.items()})
            accelerator.backward(loss / micro_batches)

    _assert_full_batch_gradients(accelerator, rank, (critic, ref_critic), (generator, ref_generator))
    del generator, critic
    accelerator.free_memory()
    accelerator.end_training()


def _assert_full_batch_gradients(accelerator, rank: int, *pairs) -> None:
    """Each (DDP-wrapped model, its 1-process full-batch reference) holds the same gradients."""
    for (model, reference), name in zip(pairs, ("critic", "generator")):
        difference = _max_difference(accelerator.unwrap_model(model), reference)
        assert difference <= TOLERANCE, f"rank {rank}: {name} gradients differ by {difference:.2e}"


# Every DDP check of this file, run by one pair of gloo processes (`two_gloo_processes`).
DDP_CASES = {
    **{name: (f"{__name__}:_ddp_step_matches_full_batch", (name, 1)) for name in ("mlp", "dcgan", "resnet")},
    "mlp, 2 micro-batches": (f"{__name__}:_ddp_step_matches_full_batch", ("mlp", 2)),
    "fastgan": (f"{__name__}:_lightweight_ddp_step_matches_full_batch", ()),
    "ada": ("tests.test_ada:two_ranks_hold_the_one_process_p", ()),  # ADA's p, reduced over ranks
}


@pytest.fixture(scope="module")
def two_gloo_processes(tmp_path_factory) -> LaunchedCases:
    return debug_launch_cases(DDP_CASES, tmp_path_factory.mktemp("ddp_cases"))


@pytest.mark.parametrize("name", ["mlp", "dcgan", "resnet"])
def test_two_gloo_processes_give_the_full_batch_gradients(name, two_gloo_processes):
    two_gloo_processes.assert_passed(name)


def test_accumulated_micro_batches_on_two_processes_give_the_full_batch_gradients(two_gloo_processes):
    two_gloo_processes.assert_passed("mlp, 2 micro-batches")


def test_two_gloo_processes_hold_the_ada_probability_of_one(two_gloo_processes):
    two_gloo_processes.assert_passed("ada")


# --- FastGANHinge: the lightweight GAN's objective -------------------------------------------

def _lightweight_pair(attn_resolutions=()) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return build_models(
        "lightweight", resolution=64, latent_dim=8, channel_base=512, channel_max=16,
        critic_norm="none", attn_resolutions=attn_resolutions,
    )


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    """Images a decoder from 8x8 features can learn: upsampled 8x8 noise."""
    coarse = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return F.interpolate(coarse, size=64, mode="bilinear", align_corners=False)


def test_fastgan_critic_loss_is_the_hinge_with_random_labels_plus_reconstruction():
    _, discriminator = _lightweight_pair()
    real, fake = _smooth_images(4, 1), _smooth_images(4, 2)
    objective = FastGANHinge(augment=DiffAugment(policy=()), rng=torch.Generator().manual_seed(0))
    draw = objective.draw_critic(4, 64, torch.device("cpu"))
    assert torch.all((draw["real_labels"] >= 0.8) & (draw["real_labels"] <= 1.0))
    loss, stats = objective.critic_loss(discriminator, real, fake, draw)

    logits, (whole, part) = discriminator(torch.cat([real, fake]), quarters=draw["quarters"])
    hinge = (
        F.relu(draw["real_labels"][:, None] - logits[:4]).mean() + F.relu(draw["fake_labels"][:, None] + logits[4:]).mean()
    )
    recon = F.mse_loss(whole, real) + F.mse_loss(part, crop_quarter(real, draw["quarters"]))
    torch.testing.assert_close(stats["hinge"], hinge)
    torch.testing.assert_close(stats["recon"], recon)
    torch.testing.assert_close(loss, hinge + recon)
    assert "gp" not in stats  # off by default, as in the paper


def test_fastgan_generator_loss_is_minus_the_mean_logit_of_augmented_fakes():
    _, discriminator = _lightweight_pair()
    fake = _smooth_images(4, 3)
    objective = FastGANHinge(rng=torch.Generator().manual_seed(0))
    draw = objective.draw_generator(4, 64, torch.device("cpu"))
    loss, _ = objective.generator_loss(discriminator, fake, draw)
    torch.testing.assert_close(loss, -discriminator(objective.augment(fake, draw)).mean())


def test_fastgan_penalty_is_added_every_k_calls_and_its_count_survives_a_resume():
    _, discriminator = _lightweight_pair()
    real, fake = _smooth_images(4, 1), _smooth_images(4, 2)
    objective = FastGANHinge(augment=DiffAugment(policy=()), gp_weight=2.0, gp_every=3, rng=torch.Generator().manual_seed(0))
    with_penalty = []
    for _ in range(6):
        draw = objective.draw_critic(4, 64, torch.device("cpu"))
        loss, stats = objective.critic_loss(discriminator, real, fake, draw)
        with_penalty.append("gp" in stats)
        if "gp" in stats:
            expected, _ = zero_centred_penalty(discriminator, real)
            torch.testing.assert_close(stats["gp"], expected)
            torch.testing.assert_close(loss, stats["hinge"] + stats["recon"] + 2.0 * 3 * expected)
    assert with_penalty == [False, False, True, False, False, True]
    resumed = FastGANHinge(gp_every=3)
    resumed.load_state_dict(objective.state_dict())
    assert resumed.critic_calls == 6


def test_reconstruction_loss_falls_on_a_fixed_real_batch():
    _, discriminator = _lightweight_pair()
    real, fake = _smooth_images(4, 1), _smooth_images(4, 2)
    objective = FastGANHinge(augment=DiffAugment(policy=()), rng=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    recon = []
    for _ in range(40):
        loss, stats = objective.critic_loss(discriminator, real, fake)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recon.append(stats["recon"].item())
    assert sum(recon[-5:]) / 5 < 0.75 * sum(recon[:5]) / 5, recon


def _fix_injected_noise(generator: nn.Module) -> None:
    # Per-rank noise cannot equal the full batch's noise; a fixed pattern keeps the weights in the graph.
    for module in generator.modules():
        if isinstance(module, NoiseInjection):
            module.forward = lambda x, m=module: x + m.weight * torch.linspace(-1, 1, x.shape[-1]).view(1, 1, 1, -1)


def _lightweight_ddp_step_matches_full_batch() -> None:
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    generator, critic = _lightweight_pair(attn_resolutions=(8,))
    generator.eval()  # BatchNorm with fixed statistics, as in the WGAN-GP comparison
    _fix_injected_noise(generator)
    ref_generator, ref_critic = copy.deepcopy(generator), copy.deepcopy(critic)
    _fix_injected_noise(ref_generator)
    objective = FastGANHinge(gp_weight=1.0, gp_every=1, rng=torch.Generator().manual_seed(7))
    cpu = torch.device("cpu")
    torch.manual_seed(1)
    batch = {"real": _smooth_images(GLOBAL_BATCH, 1), "z_critic": torch.randn(GLOBAL_BATCH, 8), "z_generator": torch.randn(GLOBAL_BATCH, 8)}
    critic_draw = objective.draw_critic(GLOBAL_BATCH, 64, cpu)
    generator_draw = objective.draw_generator(GLOBAL_BATCH, 64, cpu)
    with torch.no_grad():
        batch["fake"] = ref_generator(batch["z_critic"])

    loss, stats = objective.critic_loss(ref_critic, batch["real"], batch["fake"], critic_draw)
    assert "gp" in stats
    loss.backward()
    ref_critic.requires_grad_(False)
    objective.generator_loss(ref_critic, ref_generator(batch["z_generator"]), generator_draw)[0].backward()

    generator, critic = accelerator.prepare(generator, critic)
    half = lambda tensors: {k: v.chunk(world)[rank] for k, v in tensors.items()}  # noqa: E731
    local = half(batch)
    loss, _ = objective.critic_loss(critic, local["real"], local["fake"], half(critic_draw))
    accelerator.backward(loss)
    critic.requires_grad_(False)
    loss, _ = objective.generator_loss(critic, generator(local["z_generator"]), half(generator_draw))
    accelerator.backward(loss)

    _assert_full_batch_gradients(accelerator, rank, (critic, ref_critic), (generator, ref_generator))
    del generator, critic
    accelerator.free_memory()
    accelerator.end_training()


def test_fastgan_step_on_two_gloo_processes_gives_the_full_batch_gradients(two_gloo_processes):
    """Augmentation, labels, quarters and the penalty drawn once for the global batch, each rank
    taking its half: DDP's averaged gradients must equal the 1-process ones."""
    two_gloo_processes.assert_passed("fastgan")
