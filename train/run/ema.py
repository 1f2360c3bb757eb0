"""Exponential moving average of the generator's weights, on torch's AveragedModel."""
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class GeneratorEMA:
    def __init__(self, generator: nn.Module, decay: float, device: torch.device | None = None):
        self.decay = decay
        self.averaged = AveragedModel(generator, device=device, multi_avg_fn=self._lerp, use_buffers=True)
        self.averaged.requires_grad_(False)

    @torch.no_grad()
    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        # Warm-up as in TF's ExponentialMovingAverage(num_updates): a short run's average is not
        # dominated by the random initial weights. Kept a tensor, so no host sync per step.
        decay = torch.clamp((1 + num_averaged) / (10 + num_averaged), max=self.decay)
        torch._foreach_lerp_(averaged, current, 1 - decay)

    def update(self, generator: nn.Module) -> None:
        self.averaged.update_parameters(generator)

    @property
    def generator(self) -> nn.Module:
        return self.averaged.module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state)


def ema_generator_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The generator's own state dict inside a saved AveragedModel state."""
    return {k.removeprefix("module."): v for k, v in ema_state.items() if k.startswith("module.")}
