"""How the phases backpropagate and update: the contract (`Updates`) and the DDP path that keeps it.

train.run.zero.ZeroUpdates keeps the same contract for DeepSpeed engines; the phases
(train.run.phases) know only the contract.
"""
import contextlib
from typing import Protocol

import torch
from accelerate import Accelerator
from torch import nn
from torch.nn.utils import get_total_norm


class Updates(Protocol):
    """What the phases ask of a data-parallel backend, network by network."""

    def network(self, model: nn.Module) -> nn.Module:
        """What the objective and the loop call in place of `model`."""

    def sync_unless_last(self, model: nn.Module, micro: int) -> contextlib.AbstractContextManager:
        """The context of micro-batch `micro`'s forward and backward: gradients are reduced on the last only."""

    def backward(self, model: nn.Module, loss: torch.Tensor, micro: int) -> None:
        """One micro-batch's backward of its (undivided) loss."""

    def update(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> bool:
        """The update after the last micro-batch; whether it was made (False: a non-finite gradient)."""


class DataParallelUpdates:
    """The `Updates` of DDP (or of one process): Accelerate's backward, the optimizer's step."""

    def __init__(self, accelerator: Accelerator, grad_accum: int):
        self.accelerator, self.grad_accum = accelerator, grad_accum

    def network(self, model: nn.Module) -> nn.Module:
        return model

    def sync_unless_last(self, model: nn.Module, micro: int) -> contextlib.AbstractContextManager:
        # Under DDP, all-reduce gradients only on the last micro-batch of an accumulated step.
        return self.accelerator.no_sync(model) if micro < self.grad_accum - 1 else contextlib.nullcontext()

    def backward(self, model: nn.Module, loss: torch.Tensor, micro: int) -> None:
        self.accelerator.backward(loss / self.grad_accum)

    def update(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> bool:
        """Step the optimizer unless a gradient is non-finite. Under DDP every rank holds the same
        all-reduced gradients, so every rank takes the same decision."""
        scaler = self.accelerator.scaler
        if scaler is None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads and not torch.isfinite(get_total_norm(grads)):  # one host sync per update
                optimizer.zero_grad(set_to_none=True)
                return False
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return True
        # Under fp16 the GradScaler makes this same check itself, and lowers its scale exactly when it
        # leaves an update out. Its scale is read rather than Accelerate's step_was_skipped, which
        # misses the skip of an optimizer that takes the scaler's found-inf into its own kernel (fused
        # Adam, the default on a GPU): it sees that optimizer's step called and reports it made.
        before = scaler.get_scale()  # get_scale syncs with the device: two host syncs per update
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return scaler.get_scale() >= before
