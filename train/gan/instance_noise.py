"""Instance noise (Sønderby et al. 2017; Arjovsky & Bottou 2017): Gaussian noise on everything the
discriminator sees, annealed as sigma_t = A * exp(-k * t / T).

Noise on real and fake alike makes the two distributions overlap, which is what gives the
discriminator's gradient meaning early on; noise on real samples only is the common shortcut.
"""
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InstanceNoise:
    amplitude: float  # A
    decay: float = 4.0  # k
    steps: int = 8000  # T, in generator steps
    real_only: bool = False

    def sigma(self, step: int) -> float:
        """The noise's std at generator step `step`: a function of the step alone, so a resumed run goes on."""
        return self.amplitude * math.exp(-self.decay * step / self.steps)

    def __call__(self, samples: torch.Tensor, kind: str, step: int, rng: torch.Generator) -> torch.Tensor:
        """`samples` with the noise of `step` added; `kind` is "real" or "fake" (fake keeps its graph)."""
        if not self.amplitude or (self.real_only and kind == "fake"):
            return samples
        noise = torch.randn(samples.shape, device=samples.device, generator=rng, dtype=samples.dtype)
        return samples + self.sigma(step) * noise
