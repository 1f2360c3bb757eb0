"""train/gan/instance_noise.py: sigma_t = A exp(-k t / T), on real and fake or real only."""
import math

import torch

from train.gan.instance_noise import InstanceNoise


def test_the_noise_anneals_as_a_exp_minus_k_t_over_t():
    noise = InstanceNoise(amplitude=0.5, decay=4.0, steps=8000)
    assert noise.sigma(0) == 0.5
    assert math.isclose(noise.sigma(2000), 0.5 * math.exp(-1.0))
    assert math.isclose(noise.sigma(8000), 0.5 * math.exp(-4.0))


def test_noise_of_the_asked_std_goes_on_real_and_fake_or_on_real_only():
    x = torch.zeros(20000, 2)
    both = InstanceNoise(amplitude=1.0, decay=4.0, steps=8000)
    for kind in ("real", "fake"):
        noisy = both(x, kind, 2000, torch.Generator().manual_seed(0))
        assert abs(noisy.std().item() - math.exp(-1.0)) < 0.01
    real_only = InstanceNoise(amplitude=1.0, real_only=True)
    assert real_only(x, "fake", 0, torch.Generator()) is x
    assert real_only(x, "real", 0, torch.Generator().manual_seed(0)).std() > 0.9


def test_fakes_keep_their_graph_through_the_noise():
    fake = torch.ones(4, 2, requires_grad=True)
    InstanceNoise(amplitude=1.0)(fake, "fake", 10, torch.Generator().manual_seed(0)).sum().backward()
    assert torch.equal(fake.grad, torch.ones(4, 2))
