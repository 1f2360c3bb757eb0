"""Mode coverage on the toy mixtures, with the PacGAN protocol (Lin et al. 2018, Table 1; after
VEEGAN, Srivastava et al. 2017): a sample is high quality within 3 standard deviations of its
nearest mode; a mode is covered by at least one high-quality sample; the reverse KL divergence is
that of the high-quality samples' distribution over modes from the true, uniform one."""
import math
from dataclasses import dataclass

import torch

HIGH_QUALITY_STDS = 3.0


@dataclass(frozen=True)
class ModeCoverage:
    modes: int  # covered
    total_modes: int
    high_quality: float  # fraction of samples
    reverse_kl: float  # KL(generated || uniform) over modes; inf when no sample is high quality


def mode_coverage(samples: torch.Tensor, centres: torch.Tensor, std: float) -> ModeCoverage:
    distances = torch.cdist(samples.float(), centres.float())
    nearest_distance, nearest = distances.min(dim=1)
    good = nearest_distance <= HIGH_QUALITY_STDS * std
    counts = torch.bincount(nearest[good], minlength=len(centres)).double()
    if counts.sum() == 0:
        return ModeCoverage(0, len(centres), 0.0, math.inf)
    generated = counts / counts.sum()
    present = generated > 0  # 0 log 0 = 0
    reverse_kl = (generated[present] * (generated[present] * len(centres)).log()).sum().item()
    return ModeCoverage(int((counts > 0).sum()), len(centres), good.double().mean().item(), reverse_kl)
