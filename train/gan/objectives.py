"""Adversarial objectives: what each phase minimises, independent of the loop that runs them.

An objective takes the (possibly DDP-wrapped) critic and batches and returns a loss with detached
statistics to log; the loop decides when, how often and under which precision to call it.
"""
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from models.lightweight import crop_quarter
from train.gan.diffaugment import DiffAugment, Draw
from train.gan.penalty import gradient_penalty, interpolate, zero_centred_penalty
from train.gan.reconstruction import ReconLoss, mse
from train.gan.unrolled import Unrolling

Stats = dict[str, torch.Tensor]


class Objective(Protocol):
    """What the loop asks of an objective: a loss per phase, and its own state for checkpoints."""

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, Stats]: ...
    def generator_loss(self, critic: nn.Module, fake: torch.Tensor) -> tuple[torch.Tensor, Stats]: ...
    def state_dict(self) -> dict: ...  # saved with each rank's checkpoint
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class WGANGP:
    """Wasserstein GAN with gradient penalty (Gulrajani et al. 2017)."""

    gp_weight: float = 10.0
    scaler: torch.amp.GradScaler | None = None
    rng: torch.Generator | None = None

    def critic_loss(
        self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Stats]:
        """D(fake) - D(real) + gp_weight * GP at per-sample random interpolates."""
        if alpha is None:
            alpha = torch.rand(real.shape[0], device=real.device, generator=self.rng)
        # One forward for real and fake: the critic's norms are per sample, so this equals two.
        d_real, d_fake = critic(torch.cat([real, fake.detach()])).float().chunk(2)
        gp, _ = gradient_penalty(critic, interpolate(real, fake, alpha), self.scaler)
        wdist = d_real.mean() - d_fake.mean()
        loss = -wdist + self.gp_weight * gp
        return loss, {"d_loss": loss.detach(), "wdist": wdist.detach(), "gp": gp.detach(), "r_t": overfitting(d_real)}

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        loss = -critic(fake).float().mean()
        return loss, {"g_loss": loss.detach()}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def overfitting(d_real: torch.Tensor) -> torch.Tensor:
    """r_t = E[sign(D(real))], ADA's overfitting heuristic (Karras et al. 2020, eq. 1): near 0 while the
    critic cannot tell the training images from new ones, toward 1 as it learns them by heart."""
    return d_real.detach().sign().mean()


def _prefixed(draw: Draw, prefix: str) -> Draw:
    return {k.removeprefix(prefix): v for k, v in draw.items() if k.startswith(prefix)}


@dataclass
class FastGANHinge:
    """The lightweight GAN's objective (Liu et al. 2021): a hinge with random real labels in
    [0.8, 1.0], DiffAugment on everything the discriminator sees, and the decoders' reconstruction
    of real images; optionally a zero-centred penalty on real images every `gp_every` calls.

    Every random number of a call comes from `draw_critic` / `draw_generator` (per-rank `rng`);
    passing a draw makes a call deterministic, which is how the DDP test splits one global draw.
    """

    augment: DiffAugment = field(default_factory=DiffAugment)
    recon_loss: ReconLoss = mse
    recon_weight: float = 1.0
    gp_weight: float = 0.0
    gp_every: int = 4
    scaler: torch.amp.GradScaler | None = None
    rng: torch.Generator | None = None
    critic_calls: int = 0

    def draw_critic(self, batch: int, size: int, device: torch.device) -> Draw:
        def labels() -> torch.Tensor:
            return 0.8 + 0.2 * torch.rand(batch, device=device, generator=self.rng)

        real = self.augment.draw(batch, size, device, self.rng)
        fake = self.augment.draw(batch, size, device, self.rng)
        return {
            **{f"real_{k}": v for k, v in real.items()},
            **{f"fake_{k}": v for k, v in fake.items()},
            "real_labels": labels(),
            "fake_labels": labels(),
            "quarters": torch.randint(0, 4, (batch,), device=device, generator=self.rng),
        }

    def draw_generator(self, batch: int, size: int, device: torch.device) -> Draw:
        return self.augment.draw(batch, size, device, self.rng)

    def critic_loss(
        self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, draw: Draw | None = None
    ) -> tuple[torch.Tensor, Stats]:
        n = len(real)
        if draw is None:
            draw = self.draw_critic(n, real.shape[-1], real.device)
        real = self.augment(real, _prefixed(draw, "real_"))
        fake = self.augment(fake.detach(), _prefixed(draw, "fake_"))
        # One forward: the discriminator's norms are per sample, so this equals two.
        logits, (whole, part) = critic(torch.cat([real, fake]), quarters=draw["quarters"])
        d_real, d_fake = logits.float()[:n], logits.float()[n:]
        hinge = (
            F.relu(draw["real_labels"][:, None] - d_real).mean() + F.relu(draw["fake_labels"][:, None] + d_fake).mean()
        )
        recon = self.recon_loss(whole, F.interpolate(real, size=whole.shape[-1], mode="area")) + self.recon_loss(
            part, F.interpolate(crop_quarter(real, draw["quarters"]), size=part.shape[-1], mode="area")
        )
        loss = hinge + self.recon_weight * recon
        stats = {"hinge": hinge, "recon": recon, "d_real": d_real.mean(), "d_fake": d_fake.mean(), "r_t": overfitting(d_real)}
        self.critic_calls += 1
        if self.gp_weight > 0 and self.critic_calls % self.gp_every == 0:
            # Lazy regularisation (Karras et al. 2020): every k-th call, k times the weight. The
            # penalty shares this backward with the hinge, which already touches every parameter.
            gp, _ = zero_centred_penalty(critic, real, self.scaler)
            loss = loss + self.gp_weight * self.gp_every * gp
            stats["gp"] = gp
        stats["d_loss"] = loss
        return loss, {k: v.detach() for k, v in stats.items()}

    def generator_loss(
        self, critic: nn.Module, fake: torch.Tensor, draw: Draw | None = None
    ) -> tuple[torch.Tensor, Stats]:
        if draw is None:
            draw = self.draw_generator(len(fake), fake.shape[-1], fake.device)
        loss = -critic(self.augment(fake, draw)).float().mean()
        return loss, {"g_loss": loss.detach()}

    def state_dict(self) -> dict:
        return {"critic_calls": self.critic_calls}

    def load_state_dict(self, state: dict) -> None:
        self.critic_calls = int(state["critic_calls"])


@dataclass(frozen=True)
class ZeroCentredPenalties:
    """R1 on real samples (Mescheder et al. 2018) and R2 on generated ones, each gamma / 2 * E||grad D||^2
    with its own gamma; 0 leaves a penalty out (and its forward and double backward with it). They are
    added to the critic's loss, whose one backward touches every parameter (penalty.py's DDP rule)."""

    r1_weight: float = 0.0
    r2_weight: float = 0.0

    def __call__(
        self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, scaler: torch.amp.GradScaler | None
    ) -> tuple[torch.Tensor | float, Stats]:
        total, stats = 0.0, {}
        for name, weight, inputs in (("r1", self.r1_weight, real), ("r2", self.r2_weight, fake)):
            if weight:
                penalty, _ = zero_centred_penalty(critic, inputs.detach(), scaler)
                total = total + weight / 2 * penalty
                stats[name] = penalty
        return total, stats


@dataclass
class RpGAN:
    """The relativistic pairing GAN loss (Huang et al. 2024, "The GAN is dead; long live the GAN!",
    R3GAN; after Jolicoeur-Martineau 2019): the critic minimises softplus(-(D(real) - D(fake))), the
    generator softplus(-(D(fake) - D(real))), over pairs of a real and a generated sample; with R1
    and R2 (R3GAN's regularised form, gamma the same for both in the paper) it converges locally.

    The generator's loss pairs each fake with a real sample: the last real batch the critic phase
    saw (the same step's with critic_steps 1), or `real` when given (how the DDP test splits one
    global batch). Real and fake go through the critic apart, as in NonSaturating (BatchNorm)."""

    penalties: ZeroCentredPenalties = field(default_factory=ZeroCentredPenalties)
    scaler: torch.amp.GradScaler | None = None
    rng: torch.Generator | None = None
    last_real: torch.Tensor | None = None

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        self.last_real = real.detach()
        d_real, d_fake = critic(real).float(), critic(fake.detach()).float()
        pairing = F.softplus(-(d_real - d_fake)).mean()
        penalty, stats = self.penalties(critic, real, fake, self.scaler)
        loss = pairing + penalty
        stats = {**stats, "d_loss": loss, "pairing": pairing, "d_real": d_real.mean(), "d_fake": d_fake.mean(),
                 "r_t": overfitting(d_real)}
        return loss, {k: v.detach() for k, v in stats.items()}

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor, real: torch.Tensor | None = None) -> tuple[torch.Tensor, Stats]:
        real = self.last_real if real is None else real
        if real is None or len(real) != len(fake):
            raise ValueError("RpGAN pairs each fake with a real sample: run the critic phase first, on batches of the same size")
        loss = F.softplus(-(critic(fake).float() - critic(real.detach()).float())).mean()
        return loss, {"g_loss": loss.detach()}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass(frozen=True)
class LabelSmoothing:
    """The discriminator's targets: fixed (one-sided: real 0.9; two-sided: real 0.95, fake 0.15),
    drawn per sample from a range (real in [0.8, 1.1], fake in [0, 0.3]), or jittered with Gaussian
    noise (std 0.15); and, with `generator`, the generator's target drawn as the real one."""

    real: float = 1.0
    fake: float = 0.0
    jitter: float = 0.0
    real_range: tuple[float, float] | None = None
    fake_range: tuple[float, float] | None = None
    generator: bool = False

    def targets(self, kind: str, n: int, device: torch.device, rng: torch.Generator | None) -> torch.Tensor:
        value, span = (self.real, self.real_range) if kind == "real" else (self.fake, self.fake_range)
        if span is not None:
            low, high = span
            target = low + (high - low) * torch.rand(n, device=device, generator=rng)
        else:
            target = torch.full((n,), value, device=device)
        if self.jitter:
            target = target + self.jitter * torch.randn(n, device=device, generator=rng)
        return target

    def generator_targets(self, n: int, device: torch.device, rng: torch.Generator | None) -> torch.Tensor:
        return self.targets("real", n, device, rng) if self.generator else torch.ones(n, device=device)


@dataclass
class NonSaturating:
    """The original GAN's discriminator loss and the non-saturating generator loss (Goodfellow et al.
    2014), as binary cross-entropy on logits: the numerically stable form of sigmoid + BCE.

    Real and fake go through the discriminator apart, as in the DCGAN tutorial: with BatchNorm in
    the discriminator a batch's statistics would otherwise mix the two. `unrolling` takes the
    generator's loss against the discriminator after k further updates (train/gan/unrolled.py),
    on the last real batch the critic phase saw. `penalties` (R1 alone: StyleGAN2's default, Karras
    et al. 2020) are added to the critic's loss, not to the unrolled updates'."""

    labels: LabelSmoothing = field(default_factory=LabelSmoothing)
    penalties: ZeroCentredPenalties = field(default_factory=ZeroCentredPenalties)
    unrolling: Unrolling | None = None
    scaler: torch.amp.GradScaler | None = None
    rng: torch.Generator | None = None
    last_real: torch.Tensor | None = None

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        self.last_real = real.detach()
        loss, stats = self.discriminator_loss(critic, real, fake.detach())
        penalty, penalties = self.penalties(critic, real, fake, self.scaler)
        if not penalties:
            return loss, stats
        loss = loss + penalty
        return loss, {**stats, **{k: v.detach() for k, v in penalties.items()}, "d_loss": loss.detach()}

    def discriminator_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        """The discriminator's loss, differentiable in `fake` too (the exact unrolled updates need that)."""
        d_real, d_fake = critic(real).float(), critic(fake).float()
        real_targets = self.labels.targets("real", len(d_real), d_real.device, self.rng)
        fake_targets = self.labels.targets("fake", len(d_fake), d_fake.device, self.rng)
        loss = F.binary_cross_entropy_with_logits(d_real, real_targets) + F.binary_cross_entropy_with_logits(d_fake, fake_targets)
        stats = {"d_loss": loss, "d_real": torch.sigmoid(d_real).mean(), "d_fake": torch.sigmoid(d_fake).mean(),
                 "r_t": overfitting(d_real)}
        return loss, {k: v.detach() for k, v in stats.items()}

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        if self.unrolling is not None and self.last_real is not None:
            critic = self.unrolling.critic_after(critic, self.last_real, fake, self.discriminator_loss)
        logits = critic(fake).float()
        loss = F.binary_cross_entropy_with_logits(logits, self.labels.generator_targets(len(logits), logits.device, self.rng))
        return loss, {"g_loss": loss.detach()}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
