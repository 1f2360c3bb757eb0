"""Augmentation of everything the discriminator sees, for any objective: real and generated images,
in the critic phase and the generator phase, before the objective takes them. A penalty is then
taken at the augmented images, the images the critic judged, as the lightweight GAN's objective
does with its DiffAugment (FastGANHinge); WGAN-GP's interpolates lie between augmented images.

`--augment fixed` puts DiffAugment here (Zhao et al. 2020: every op on every image); `--augment ada`
its adaptive form (train/gan/ada.py), which also reads the objective's `r_t` statistic.
"""
from dataclasses import dataclass

import torch
from torch import nn

from train.gan.ada import AdaController, AdaptiveAugment, Reduce
from train.gan.diffaugment import DiffAugment
from train.gan.objectives import Objective, Stats

AUGMENT_MODES = ("none", "fixed", "ada")


@dataclass(frozen=True)
class AugmentOptions:
    """--augment and ADA's settings, as the config hands them to `augmented`."""

    mode: str = "none"
    ada_target: float = 0.6
    ada_kimg: float = 500.0


def augmented(objective: Objective, options: AugmentOptions, rng: torch.Generator | None,
              reduce: Reduce) -> tuple[Objective, AdaController | None]:
    """`objective` as the run trains it, and the ADA controller the loop steps (None without ADA);
    `reduce` sums a tensor over every rank."""
    if options.mode == "none":
        return objective, None
    if options.mode == "fixed":
        return Augmented(objective, DiffAugment(), rng), None
    controller = AdaController(AdaptiveAugment(), target=options.ada_target, kimg=options.ada_kimg, reduce=reduce)
    return Augmented(objective, controller.augment, rng, controller), controller


@dataclass
class Augmented:
    """`objective` with `augment` applied to its inputs; `controller` steers an adaptive `augment`."""

    objective: Objective
    augment: DiffAugment
    rng: torch.Generator | None = None
    controller: AdaController | None = None

    def _augmented(self, images: torch.Tensor) -> torch.Tensor:
        return self.augment(images, self.augment.draw(len(images), images.shape[-1], images.device, self.rng))

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        loss, stats = self.objective.critic_loss(critic, self._augmented(real), self._augmented(fake.detach()))
        if self.controller is not None:
            self.controller.observe(stats["r_t"], len(real))
            stats = {**stats, "augment_p": loss.detach().new_full((), self.controller.p)}
        return loss, stats

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        return self.objective.generator_loss(critic, self._augmented(fake))

    def state_dict(self) -> dict:
        state = {"objective": self.objective.state_dict()}
        if self.controller is not None:
            state["ada"] = self.controller.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state["objective"])
        if self.controller is not None:
            self.controller.load_state_dict(state["ada"])
