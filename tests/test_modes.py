"""train/report/modes.py: the PacGAN mode-coverage protocol."""
import math

import torch

from train.data.generated import toy_modes
from train.report.modes import mode_coverage


def test_samples_from_the_true_mixture_cover_every_mode_in_high_quality():
    centres, std = toy_modes("25gaussians")
    rng = torch.Generator().manual_seed(0)
    samples = centres.repeat(100, 1) + std * torch.randn(2500, 2, generator=rng)
    coverage = mode_coverage(samples, centres, std)
    assert (coverage.modes, coverage.total_modes) == (25, 25)
    assert coverage.high_quality > 0.98  # 3 std holds 98.9% of a 2-D Gaussian
    assert coverage.reverse_kl < 1e-3


def test_half_the_modes_is_reverse_kl_log_2_and_points_between_modes_are_low_quality():
    centres, std = toy_modes("8gaussians")
    half = centres[::2].repeat(10, 1)
    coverage = mode_coverage(half, centres, std)
    assert coverage.modes == 4 and math.isclose(coverage.reverse_kl, math.log(2), rel_tol=1e-6)
    between = (centres + centres.roll(1, 0)) / 2
    assert mode_coverage(between, centres, std).high_quality == 0.0
    assert mode_coverage(between, centres, std).reverse_kl == math.inf
