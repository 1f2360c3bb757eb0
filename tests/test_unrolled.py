"""train/gan/unrolled.py: the generator judged by the discriminator k updates ahead (Metz et al. 2017)."""
import copy

import pytest
import torch
from torch.nn import functional as F

from models import build_models
from tests.conftest import LaunchedCases, debug_launch_cases
from train.gan.objectives import NonSaturating
from train.gan.unrolled import Unrolling

LR, BETAS = 1e-2, (0.5, 0.999)


def _pair(pack: int = 1):
    torch.manual_seed(0)
    return build_models("mlp", resolution=64, latent_dim=2, mlp_hidden=32, pack=pack)


def _batch(n: int = 16):
    torch.manual_seed(1)
    return torch.randn(n, 2) * 2, torch.randn(n, 2)


def test_the_unrolled_critic_is_k_adam_steps_of_the_critic_loss():
    """Look-ahead from zero moments equals torch.optim.Adam run k times on a copy."""
    generator, critic = _pair()
    real, z = _batch()
    fake = generator(z).detach()
    objective = NonSaturating()
    ahead = Unrolling(steps=3, lr=LR, betas=BETAS, exact=False).critic_after(critic, real, fake, objective.critic_loss)
    reference = copy.deepcopy(critic)
    optimizer = torch.optim.Adam(reference.parameters(), lr=LR, betas=BETAS)
    for _ in range(3):
        optimizer.zero_grad()
        objective.critic_loss(reference, real, fake)[0].backward()
        optimizer.step()
    probe = torch.randn(8, 2)
    torch.testing.assert_close(ahead(probe), reference(probe), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(critic(probe), reference(probe))  # the critic itself did not move


def _generator_gradient(unrolling: Unrolling | None) -> torch.Tensor:
    generator, critic = _pair()
    real, z = _batch()
    objective = NonSaturating(unrolling=unrolling)
    objective.critic_loss(critic, real, generator(z).detach())
    critic.requires_grad_(False)
    loss, _ = objective.generator_loss(critic, generator(z))
    loss.backward()
    return torch.cat([p.grad.flatten() for p in generator.parameters()])


def test_the_exact_form_differentiates_through_the_updates_and_the_look_ahead_does_not():
    plain = _generator_gradient(None)
    ahead = _generator_gradient(Unrolling(5, LR, BETAS, exact=False))
    exact = _generator_gradient(Unrolling(5, LR, BETAS, exact=True))
    assert not torch.allclose(ahead, plain)  # judged by another discriminator
    assert not torch.allclose(exact, ahead, rtol=1e-3)  # plus the path through the k updates
    assert torch.isfinite(exact).all()


def _unrolled_ddp_step_matches_full_batch(pack: int, steps: int) -> None:
    """Each rank unrolls on its half with gradients averaged over ranks: the generator's DDP
    gradient equals the 1-process one on the whole batch (and so does the critic's)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    generator, critic = _pair(pack)
    ref_generator, ref_critic = copy.deepcopy(generator), copy.deepcopy(critic)
    real, z = _batch(16)
    unrolling = Unrolling(steps, LR, BETAS, exact=True) if steps else None

    reference = NonSaturating(unrolling=unrolling)
    reference.critic_loss(ref_critic, real, ref_generator(z).detach())[0].backward()
    ref_critic.requires_grad_(False)
    reference.generator_loss(ref_critic, ref_generator(z))[0].backward()

    generator, critic = accelerator.prepare(generator, critic)
    half = lambda t: t.chunk(world)[rank]  # noqa: E731
    objective = NonSaturating(unrolling=unrolling)
    accelerator.backward(objective.critic_loss(critic, half(real), generator(half(z)).detach())[0])
    critic.requires_grad_(False)
    accelerator.backward(objective.generator_loss(critic, generator(half(z)))[0])
    for model, ref, name in ((critic, ref_critic, "critic"), (generator, ref_generator, "generator")):
        for p, r in zip(accelerator.unwrap_model(model).parameters(), ref.parameters()):
            difference = ((p.grad - r.grad).abs().max() / r.grad.abs().max().clamp(min=1.0)).item()
            assert difference <= 1e-5, f"rank {rank}: {name} gradients differ by {difference:.2e}"
    del generator, critic
    accelerator.free_memory()
    accelerator.end_training()


# Both DDP checks, run by one pair of gloo processes (`two_gloo_processes`): id: (pack, unrolled steps).
DDP_CASES = {"unrolled": (1, 3), "packed": (2, 0)}


@pytest.fixture(scope="module")
def two_gloo_processes(tmp_path_factory) -> LaunchedCases:
    cases = {case: (f"{__name__}:_unrolled_ddp_step_matches_full_batch", args) for case, args in DDP_CASES.items()}
    return debug_launch_cases(cases, tmp_path_factory.mktemp("ddp_cases"))


@pytest.mark.slow
@pytest.mark.parametrize("case", DDP_CASES)
def test_an_unrolled_or_packed_step_on_two_gloo_processes_gives_the_full_batch_gradients(case, two_gloo_processes):
    two_gloo_processes.assert_passed(case)


def test_the_non_saturating_losses_are_binary_cross_entropy_on_logits():
    generator, critic = _pair()
    real, z = _batch()
    fake = generator(z)
    loss, stats = NonSaturating().critic_loss(critic, real, fake)
    expected = F.softplus(-critic(real)).mean() + F.softplus(critic(fake)).mean()
    torch.testing.assert_close(loss, expected)
    g_loss, _ = NonSaturating().generator_loss(critic, fake)
    torch.testing.assert_close(g_loss, F.softplus(-critic(fake)).mean())
    assert 0 < stats["d_real"] < 1 and 0 < stats["d_fake"] < 1
