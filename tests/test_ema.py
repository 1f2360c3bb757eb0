"""train/run/ema.py: the generator EMA and its warm-up."""
import torch
from torch import nn

from train.run.ema import GeneratorEMA, ema_generator_weights


def test_ema_starts_at_the_weights_then_follows_them_with_a_warm_up():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = GeneratorEMA(model, decay=0.999)
    ema.update(model)
    assert ema.generator.weight.item() == 0.0
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # second update: decay min(0.999, 2/11)
    assert abs(ema.generator.weight.item() - (1 - 2 / 11)) < 1e-6
    for _ in range(3000):
        ema.update(model)
    assert abs(ema.generator.weight.item() - 1.0) < 1e-3


def test_ema_decay_caps_the_warm_up():
    model = nn.Linear(1, 1, bias=False)
    ema = GeneratorEMA(model, decay=0.5)
    for _ in range(50):
        ema.update(model)
    with torch.no_grad():
        before = ema.generator.weight.item()
        model.weight.add_(1.0)
    ema.update(model)
    assert abs(ema.generator.weight.item() - (before + 0.5)) < 1e-6


def test_ema_averages_batchnorm_statistics_and_round_trips():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = GeneratorEMA(model, decay=0.9)
    model(torch.randn(8, 2))
    ema.update(model)
    torch.testing.assert_close(ema.generator[1].running_mean, model[1].running_mean)
    assert ema.generator[1].num_batches_tracked.item() == 1
    copy = GeneratorEMA(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), decay=0.9)
    copy.load_state_dict(ema.state_dict())
    fresh = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    fresh.load_state_dict(ema_generator_weights(ema.state_dict()))
    torch.testing.assert_close(fresh[0].weight, model[0].weight)
