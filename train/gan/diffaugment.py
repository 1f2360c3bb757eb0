"""Differentiable Augmentation (Zhao et al., NeurIPS 2020): the same random transformations on real
and fake images before the discriminator, differentiable so the generator learns through them.

Randomness is drawn apart from its application (`draw`, then `__call__`), from the objective's
per-rank generator: ranks augment differently, and a test can hand each rank its slice of one
global draw. Each transformation is applied to each sample with `probability`.
"""
from dataclasses import dataclass

import torch
from einops import rearrange
from torch.nn import functional as F

POLICIES = ("color", "translation", "cutout")
Draw = dict[str, torch.Tensor]


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation,cutout' (the DiffAugment code's format) -> names; '' or 'none' -> ()."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip() and name.strip() != "none")
    for name in names:
        if name not in POLICIES:
            raise ValueError(f"unknown DiffAugment policy {name!r}; use a comma-separated list of {', '.join(POLICIES)}")
    return names


@dataclass
class DiffAugment:
    policy: tuple[str, ...] = POLICIES
    probability: float = 1.0
    translation_ratio: float = 0.125  # the paper's: shifts of up to 1/8 of the image
    cutout_ratio: float = 0.5  # the paper's: a square of half the image side

    @property
    def active(self) -> bool:
        return bool(self.policy) and self.probability > 0

    def draw(self, batch: int, size: int, device: torch.device, rng: torch.Generator | None = None) -> Draw:
        """Every random number one call needs, batch-first, for images of `size` x `size`."""
        if not self.active:
            return {}

        def uniform() -> torch.Tensor:
            return torch.rand(batch, device=device, generator=rng)

        draw: Draw = {}
        for name in self.policy:
            draw[f"{name}_apply"] = uniform() < self.probability
        if "color" in self.policy:
            draw["brightness"] = uniform() - 0.5
            draw["saturation"] = uniform() * 2
            draw["contrast"] = uniform() + 0.5
        if "translation" in self.policy:
            shift = self._shift(size)
            draw["shift"] = torch.randint(-shift, shift + 1, (batch, 2), device=device, generator=rng)
        if "cutout" in self.policy:
            cut = self._cut(size)
            draw["cutout_centre"] = torch.randint(0, size + (1 - cut % 2), (batch, 2), device=device, generator=rng)
        return draw

    def __call__(self, images: torch.Tensor, draw: Draw) -> torch.Tensor:
        if not self.active:
            return images
        for name in self.policy:
            augmented = getattr(self, f"_{name}")(images, draw)
            images = torch.where(draw[f"{name}_apply"].view(-1, 1, 1, 1), augmented, images)
        return images

    def _shift(self, size: int) -> int:
        return int(size * self.translation_ratio + 0.5)

    def _cut(self, size: int) -> int:
        return int(size * self.cutout_ratio + 0.5)

    def _color(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        per_sample = lambda key: draw[key].view(-1, 1, 1, 1).to(x.dtype)  # noqa: E731
        x = x + per_sample("brightness")
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * per_sample("saturation") + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * per_sample("contrast") + mean

    def _translation(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Shift each image by whole pixels, filling with zeros; a gather, so gradients flow back."""
        b, _, h, w = x.shape
        pad = self._shift(h)
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = torch.arange(h, device=x.device) + pad + draw["shift"][:, :1]  # (b, h)
        cols = torch.arange(w, device=x.device) + pad + draw["shift"][:, 1:]  # (b, w)
        batch = torch.arange(b, device=x.device)[:, None, None]
        return rearrange(padded[batch, :, rows[:, :, None], cols[:, None, :]], "b h w c -> b c h w")

    def _cutout(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        _, _, h, w = x.shape
        cut = self._cut(h)
        low = draw["cutout_centre"] - cut // 2  # (b, 2): first row and column of the square
        rows = torch.arange(h, device=x.device)[None] - low[:, :1]
        cols = torch.arange(w, device=x.device)[None] - low[:, 1:]
        inside = ((rows >= 0) & (rows < cut))[:, :, None] & ((cols >= 0) & (cols < cut))[:, None, :]
        return x * (~inside)[:, None].to(x.dtype)
