"""train/gan/ada.py and train/gan/augmented.py: adaptive augmentation (Karras et al. 2020), its
probability's controller, the ops, what the discriminator sees, and p across a resume."""
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import assert_resumed_like_whole, completed, train_in_process
from tests.fixtures import write_image_folder
from train.gan.ada import AdaController, AdaptiveAugment
from train.gan.augmented import Augmented, AugmentOptions, augmented
from train.gan.objectives import WGANGP, NonSaturating
from train.report.metrics import read_metrics


def controller(**kwargs) -> AdaController:
    return AdaController(AdaptiveAugment(), **{"target": 0.6, "interval": 4, "kimg": 1.0, **kwargs})


class Steps:
    """Drives a controller as the loop does: one real batch observed per step, then `after_step`."""

    def __init__(self, ada: AdaController):
        self.ada, self.step = ada, 0

    def __call__(self, sign: float, n: int, batch: int = 25) -> None:
        """`n` steps, each one batch of `batch` real images whose mean sign(D(real)) is `sign`."""
        for _ in range(n):
            self.step += 1
            self.ada.observe(torch.tensor(sign), batch)
            self.ada.after_step(self.step)


def test_p_moves_by_the_real_images_seen_over_kimg_every_interval_steps():
    ada = controller()
    steps = Steps(ada)
    steps(1.0, 3)
    assert ada.p == 0.0  # no adjustment before the 4th step
    steps(1.0, 1)
    assert ada.p == pytest.approx(4 * 25 / 1000) and ada.r_t == 1.0
    steps(1.0, 8)
    assert ada.p == pytest.approx(3 * 4 * 25 / 1000)
    steps(0.2, 4)  # steps 13 to 16: r_t below the target, p falls at the same speed
    assert ada.p == pytest.approx(2 * 4 * 25 / 1000) and ada.r_t == pytest.approx(0.2)


def test_the_default_speed_takes_p_from_0_to_1_in_500k_real_images():
    ada = AdaController(AdaptiveAugment())
    steps = Steps(ada)
    assert (ada.target, ada.interval, ada.kimg) == (0.6, 4, 500.0)
    steps(1.0, 4 * 499, batch=250)  # 499,000 images
    assert ada.p == pytest.approx(0.998)
    steps(1.0, 8, batch=250)
    assert ada.p == 1.0


def test_p_is_clamped_to_0_and_1():
    ada = controller()
    steps = Steps(ada)
    steps(-1.0, 40)
    assert ada.p == 0.0
    steps(1.0, 4 * 100)
    assert ada.p == 1.0


def test_p_zero_is_the_identity_and_p_one_flips_every_image():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    still = AdaptiveAugment()
    assert still(x, still.draw(4, 8, x.device, torch.Generator().manual_seed(1))) is x
    flip = AdaptiveAugment(policy=("xflip",), probability=1.0)
    torch.testing.assert_close(flip(x, flip.draw(4, 8, x.device, torch.Generator().manual_seed(1))), x.flip(-1))


def test_each_op_is_applied_per_sample_with_probability_p():
    augment = AdaptiveAugment(probability=0.3)
    draw = augment.draw(4000, 8, torch.device("cpu"), torch.Generator().manual_seed(2))
    for name in ("xflip", "translation", "color", "cutout"):
        assert abs(draw[f"{name}_apply"].float().mean().item() - 0.3) < 0.03, name


def test_the_generator_learns_through_every_op():
    augment = AdaptiveAugment(probability=1.0)
    x = torch.rand(4, 3, 8, 8).requires_grad_(True)
    out = augment(x, augment.draw(4, 8, x.device, torch.Generator().manual_seed(3)))
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad.abs().sum() > 0


class Recorder(nn.Module):
    """A critic that keeps every batch it is shown."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x.mean(dim=(1, 2, 3)) * self.scale - 0.5


def test_ada_augments_every_image_the_critic_sees_real_and_fake_in_both_phases_and_reads_r_t():
    objective, ada = augmented(NonSaturating(), AugmentOptions("ada"), torch.Generator().manual_seed(0), reduce=lambda t: t)
    ada.augment.probability = 1.0
    ada.augment.policy = ("xflip",)
    real, fake = 0.4 * torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)  # every D(real) = mean - 0.5 < 0
    critic = Recorder()
    _, stats = objective.critic_loss(critic, real, fake)
    objective.generator_loss(critic, fake)
    assert [torch.equal(s, x.flip(-1)) for s, x in zip(critic.seen, (real, fake, fake))] == [True] * 3
    assert stats["augment_p"].item() == 1.0 and stats["r_t"].item() == -1.0
    assert ada.totals.tolist() == [-4.0, 4.0]


def test_wgangp_penalty_lies_between_the_augmented_images():
    objective = Augmented(WGANGP(rng=torch.Generator().manual_seed(0)), AdaptiveAugment(policy=("xflip",), probability=1.0))
    noise = torch.rand(2, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    real, fake, critic = 1 + noise[0], -1 - noise[1], Recorder()  # apart everywhere: alpha below is well conditioned
    objective.critic_loss(critic, real, fake)
    interpolates = critic.seen[1]
    for image, r, f in zip(interpolates.flip(-1), real, fake):  # each a point on the line real - fake, unflipped
        alpha = ((image - f) / (r - f)).flatten()
        assert torch.allclose(alpha, alpha[0].expand_as(alpha), atol=1e-4)


def test_augment_none_keeps_the_objective_and_fixed_is_diffaugment_on_every_image():
    objective = NonSaturating()
    assert augmented(objective, AugmentOptions("none"), None, lambda t: t) == (objective, None)
    wrapped, ada = augmented(objective, AugmentOptions("fixed"), None, lambda t: t)
    assert ada is None and wrapped.augment.policy == ("color", "translation", "cutout") and wrapped.augment.probability == 1.0


def test_p_survives_the_state_dict():
    ada = controller()
    Steps(ada)(1.0, 6)
    again = controller()
    again.load_state_dict(ada.state_dict())
    assert (again.p, again.r_t, again.totals.tolist()) == (ada.p, ada.r_t, ada.totals.tolist())


def test_resumed_run_continues_p_exactly(tmp_path):
    # ckpt at 3, p adjusted at 4: the sums observed before the checkpoint cross the resume too.
    common = ["--debug", "--augment", "ada", "--ada-kimg", "0.1", "--ada-target", "0", "--ckpt-every", "3", "--log-every", "2", "--sample-every", "100"]
    completed(train_in_process("train/dcgan.py", *common, "--max-steps", "6", "--out", str(tmp_path / "whole")))
    completed(train_in_process("train/dcgan.py", *common, "--max-steps", "3", "--out", str(tmp_path / "split")))
    completed(train_in_process("train/dcgan.py", "--resume", "--max-steps", "6", "--out", str(tmp_path / "split")))
    assert_resumed_like_whole(tmp_path / "whole", tmp_path / "split", ("augment_p", "r_t", "d_loss"))
    state = torch.load(tmp_path / "split" / "checkpoints" / "step_000006" / "train_state_0.pt", weights_only=True)
    assert state["objective"]["ada"]["p"] > 0  # it moved, so the comparison above says something
    refused = train_in_process("train/dcgan.py", "--resume", "--augment", "none", "--max-steps", "7", "--out", str(tmp_path / "split"))
    assert refused.returncode == 2 and "--augment none differs from the run" in refused.stderr


def ada_run(tmp_path: Path, data: str, steps: int) -> list[dict]:
    out = tmp_path / Path(data).name
    completed(train_in_process(
        "train/dcgan.py", "--debug", "--data", data, "--augment", "ada", "--ada-kimg", "2", "--max-steps", str(steps),
        "--log-every", "50", "--sample-every", "1000", "--ckpt-every", "1000", "--out", str(out)))
    return read_metrics(out / "metrics.jsonl")


@pytest.mark.slow
def test_p_rises_on_64_images_and_ends_above_the_endless_source(tmp_path):
    # At this scale (tiny networks, 800 images seen) the gap comes from how fast the critic learns to
    # tell the 64 images from the generator's, not from memorising them: over 500 steps the endless
    # source's p catches up (the README's figure). What this proves is the loop's wiring end to end.
    folder = str(write_image_folder(tmp_path / "images", 64))
    small, endless = ada_run(tmp_path, folder, 100), ada_run(tmp_path, "synthetic", 100)
    assert small[0]["augment_p"] < small[-1]["augment_p"] and small[-1]["augment_p"] > 0.2
    assert small[-1]["augment_p"] > endless[-1]["augment_p"]


# --- two processes: run by test_objectives.py's pair of gloo processes (DDP_CASES) -------------

def two_ranks_hold_the_one_process_p() -> None:
    """Each rank observes its half of every global batch; after each adjustment both ranks hold the
    p of one process that observed the whole batch."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2
    distributed = controller(reduce=lambda t: accelerator.reduce(t, reduction="sum"))
    alone = controller()
    rng, peak = torch.Generator().manual_seed(0), 0.0
    for step in range(1, 61):
        # a critic that grows confident on the reals, then less so: p rises, then falls
        scores = torch.randn(16, generator=rng) + (1.0 if step <= 40 else -1.0)
        halves = scores.chunk(world)
        distributed.observe(halves[rank].sign().mean(), len(halves[rank]))
        alone.observe(scores.sign().mean(), len(scores))
        distributed.after_step(step)
        alone.after_step(step)
        assert distributed.p == alone.p, (step, distributed.p, alone.p)
        ps = accelerator.gather(torch.tensor([distributed.p], dtype=torch.float64))
        assert ps[0] == ps[1]
        peak = max(peak, alone.p)
    assert peak > alone.p > 0  # it rose, then fell
    accelerator.end_training()
