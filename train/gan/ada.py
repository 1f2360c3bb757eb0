"""Adaptive discriminator augmentation, ADA (Karras et al., NeurIPS 2020, "Training Generative
Adversarial Networks with Limited Data"): every image the discriminator sees, real and generated,
in both phases, goes through differentiable augmentations, each applied to each sample with one
probability p; p follows the overfitting heuristic r_t = E[sign(D(real))] toward a target.

The ops are DiffAugment's (train/gan/diffaugment.py: colour, whole-pixel translation with zero
fill, cutout) plus an x-flip; ADA's own pipeline has more (rotations, scaling, filters), left for
later. They are differentiable, so the generator learns through them and, with p < 0.8, they do not
leak into its samples (the paper's section 2.2).

For WGAN-GP's critic the scores are not logits, but their sign still says on which side of zero
the critic puts the real images; the heuristic is used unchanged.
"""
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from train.gan.diffaugment import DiffAugment, Draw

ADA_POLICY = ("xflip", "translation", "color", "cutout")
Reduce = Callable[[torch.Tensor], torch.Tensor]  # a sum over every rank (identity on one process)


@dataclass
class AdaptiveAugment(DiffAugment):
    """DiffAugment's ops and an x-flip, each applied per sample with the adaptive `probability`."""

    policy: tuple[str, ...] = ADA_POLICY
    probability: float = 0.0  # the paper's: p starts at 0 and only the heuristic raises it

    def _xflip(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        return x.flip(-1)


def _no_reduce(totals: torch.Tensor) -> torch.Tensor:
    return totals


@dataclass
class AdaController:
    """Steers `augment.probability` every `interval` steps by sign(r_t - target), by as much as the
    real images seen since the last adjustment over `kimg` thousand: stylegan2-ada's defaults
    (interval 4, 500 kimg from p = 0 to p = 1, target 0.6). The sums behind r_t are reduced over
    every rank before p moves, so every rank holds the same p."""

    augment: AdaptiveAugment = field(default_factory=AdaptiveAugment)
    target: float = 0.6
    interval: int = 4
    kimg: float = 500.0
    reduce: Reduce = _no_reduce
    r_t: float = 0.0  # the heuristic at the last adjustment
    # Since the last adjustment, on this rank: the sum of sign(D(real)) over real images, and their count.
    totals: torch.Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.float64))

    @property
    def p(self) -> float:
        return self.augment.probability

    def observe(self, real_sign: torch.Tensor, images: int) -> None:
        """One real batch's mean sign(D(real)) (the objectives' `r_t` statistic); no host sync."""
        self.totals = self.totals.to(real_sign.device)
        # Scalars as kernel arguments, never a tensor made on the host: no copy to the device per call.
        sign = real_sign.detach().double()
        self.totals += torch.stack([sign, torch.ones_like(sign)]) * images

    def after_step(self, step: int) -> None:
        """Collective every `interval` steps (every rank calls it every step)."""
        if step % self.interval:
            return
        signs, images = self.reduce(self.totals.clone()).tolist()
        self.totals.zero_()
        if images == 0:
            return
        self.r_t = signs / images
        direction = (self.r_t > self.target) - (self.r_t < self.target)  # np.sign(r_t - target), as stylegan2-ada
        self.augment.probability = min(max(self.p + direction * images / (self.kimg * 1000), 0.0), 1.0)

    def state_dict(self) -> dict:
        return {"p": self.p, "r_t": self.r_t, "totals": self.totals.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.augment.probability, self.r_t = float(state["p"]), float(state["r_t"])
        self.totals = state["totals"].to(self.totals.device, torch.float64)
