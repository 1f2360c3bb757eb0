"""The adversarial step: `critic_steps` critic updates, then one generator update.

The phases know the networks only as callables, the objective only through `critic_loss` /
`generator_loss`, and the backend only through its `Updates`.
"""
import dataclasses
from typing import Callable

import torch
from torch import nn

from train.gan.objectives import Objective
from train.run.updates import Updates


@dataclasses.dataclass
class StepResult:
    skipped_updates: int  # optimizer updates left out for non-finite gradients (or an fp16 overflow)
    generator_updated: bool


class Phases:
    """The two halves of an adversarial step, each usable alone (the GPU check times them apart).

    `critic_steps` critic updates, then one generator update, each over `grad_accum` micro-batches.
    An update whose gradients are not all finite is left out, so no NaN or Inf reaches the weights
    or the optimizers' state."""

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        g_opt: torch.optim.Optimizer,
        d_opt: torch.optim.Optimizer,
        objective: Objective,
        updates: Updates,
        next_real: Callable[[], torch.Tensor],
        latents: Callable[[], torch.Tensor],
        critic_steps: int,
        grad_accum: int,
        record: Callable[[dict], None],
        perturb: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
    ):
        self.generator, self.critic, self.g_opt, self.d_opt, self.updates = generator, critic, g_opt, d_opt, updates
        # What the objective and the loop call: the models themselves, or an engine's module (zero.py says why).
        self.run_generator, self.run_critic = updates.network(generator), updates.network(critic)
        self.objective, self.next_real, self.latents, self.record = objective, next_real, latents, record
        self.critic_steps, self.grad_accum = critic_steps, grad_accum
        # What the critic sees, "real" or "fake" (instance noise); the identity unless given.
        self.perturb = perturb or (lambda samples, kind: samples)

    def critic_phase(self) -> int:
        """The critic updates; how many were left out."""
        skipped = 0
        self.generator.train()
        self.critic.requires_grad_(True)
        for _ in range(self.critic_steps):
            for micro in range(self.grad_accum):
                real = self.perturb(self.next_real(), "real")
                with torch.no_grad():
                    fake = self.perturb(self.run_generator(self.latents()), "fake")
                with self.updates.sync_unless_last(self.critic, micro):
                    loss, stats = self.objective.critic_loss(self.run_critic, real, fake)
                    self.updates.backward(self.critic, loss, micro)
                self.record(stats)
            skipped += not self.updates.update(self.d_opt, self.critic)
        return skipped

    def generator_phase(self) -> bool:
        """The generator update; whether it was made."""
        # Frozen, the critic's weights get no gradients from the generator's loss (and DDP expects none).
        self.critic.requires_grad_(False)
        for micro in range(self.grad_accum):
            with self.updates.sync_unless_last(self.generator, micro):
                fake = self.perturb(self.run_generator(self.latents()), "fake")
                loss, stats = self.objective.generator_loss(self.run_critic, fake)
                self.updates.backward(self.generator, loss, micro)
            self.record(stats)
        return self.updates.update(self.g_opt, self.generator)

    def step(self) -> StepResult:
        skipped = self.critic_phase()
        generator_updated = self.generator_phase()
        return StepResult(skipped + (not generator_updated), generator_updated)
