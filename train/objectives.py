"""Adversarial objectives: what each phase minimises, independent of the loop that runs them.

An objective takes the (possibly DDP-wrapped) critic and batches and returns a loss with detached
statistics to log; the loop decides when, how often and under which precision to call it.
"""
from dataclasses import dataclass

import torch
from torch import nn

from train.penalty import gradient_penalty, interpolate

Stats = dict[str, torch.Tensor]


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
        return loss, {"d_loss": loss.detach(), "wdist": wdist.detach(), "gp": gp.detach()}

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        loss = -critic(fake).float().mean()
        return loss, {"g_loss": loss.detach()}
