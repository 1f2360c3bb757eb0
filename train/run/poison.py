"""Test-only fault injection for the updates: the `nonfinite_loss`, `nonfinite_grad` and
`out_of_memory` failpoints (train.common.failpoints) as an `Updates` wrapper, installed only when
one of them is set, so that the product's updates carry no trace of it."""
import contextlib
from typing import Callable

import torch
from torch import nn

from train.common.failpoints import Failpoints
from train.run.updates import Updates


class PoisonedUpdates:
    """`Updates` whose losses (nonfinite_loss: NaN) or gradients (nonfinite_grad: an Inf) are not
    finite at the failpoints' steps; the loss window wins where both cover a step. At the
    out_of_memory failpoint's steps the backward raises torch.OutOfMemoryError, as CUDA's allocator does.

    With `grads_in_engine` (DeepSpeed ZeRO) the gradient failpoint scales the loss by Inf instead:
    ZeRO-2's gradients live in the engine's partitions, not in `p.grad`."""

    def __init__(self, updates: Updates, failpoints: Failpoints, step: Callable[[], int], grads_in_engine: bool):
        self.updates, self.step, self.grads_in_engine = updates, step, grads_in_engine
        self.loss_steps = failpoints.step_window("nonfinite_loss")
        self.grad_steps = failpoints.step_window("nonfinite_grad")
        self.memory_steps = failpoints.step_window("out_of_memory")

    def _poison(self) -> str | None:
        step = self.step()
        return "loss" if step in self.loss_steps else "grad" if step in self.grad_steps else None

    def network(self, model: nn.Module) -> nn.Module:
        return self.updates.network(model)

    def sync_unless_last(self, model: nn.Module, micro: int) -> contextlib.AbstractContextManager:
        return self.updates.sync_unless_last(model, micro)

    def backward(self, model: nn.Module, loss: torch.Tensor, micro: int) -> None:
        if self.step() in self.memory_steps:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (failpoint out_of_memory)")
        poison = self._poison()
        if poison == "loss":
            loss = loss * float("nan")
        elif poison == "grad" and self.grads_in_engine:
            loss = loss * float("inf")
        self.updates.backward(model, loss, micro)

    def update(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> bool:
        if self._poison() == "grad" and not self.grads_in_engine:
            next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
        return self.updates.update(optimizer, model)


def with_failpoints(updates: Updates, failpoints: Failpoints, step: Callable[[], int], grads_in_engine: bool) -> Updates:
    """`updates` as they are, or poisoned where $FACEGAN_FAILPOINTS sets one of their failpoints."""
    if not any(failpoints.step_window(name) for name in ("nonfinite_loss", "nonfinite_grad", "out_of_memory")):
        return updates
    return PoisonedUpdates(updates, failpoints, step, grads_in_engine)
