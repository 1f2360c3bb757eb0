"""A step's real batches, drawn from the rank's stream before the step's first update.

Should the data fail (a shard deleted or truncated, a decoding worker killed), every rank then
still holds the state after the previous step, and the loop stops there with a checkpoint.
"""
import time
from typing import Callable

import torch

from train.data import BatchStream, DataError, DataSpec, to_model_input


class StepBatches:
    """The batches of the step under way, the last real batch handed out (for the samples' grid)
    and the time spent waiting for data since the last metrics line."""

    def __init__(self, stream: BatchStream, spec: DataSpec, device: torch.device, batches_per_step: int):
        self.stream, self.spec, self.device, self.batches_per_step = stream, spec, device, batches_per_step
        self.pending: list[torch.Tensor] = []
        self.last_real: torch.Tensor | None = None
        self.data_wait = 0.0

    def read_first(self, any_rank: Callable[[bool], bool]) -> None:
        """The first batch proves the data can be read: until it has been decoded, nothing is
        written to --out, so a bad start leaves no half-made run behind. Collective (`any_rank`):
        every rank leaves, and rank 0 says why."""
        waited, failure = time.perf_counter(), None
        try:
            self.pending.append(next(self.stream))
        except DataError as error:
            failure = error
        if any_rank(failure is not None):
            raise failure or DataError(f"--data {self.spec}: no readable image on another process")
        self.data_wait = time.perf_counter() - waited

    def fill(self) -> str | None:
        """Draw the rest of this step's batches; one line saying why the reader failed, or None."""
        waited, failure = time.perf_counter(), None
        try:
            while len(self.pending) < self.batches_per_step:
                self.pending.append(next(self.stream))
        except Exception as error:  # whatever the reader raised: it ends the run, named by the loop
            failure = describe_data_failure(self.spec, error)
        self.data_wait += time.perf_counter() - waited
        return failure

    def next_real(self) -> torch.Tensor:
        self.last_real = to_model_input(self.pending.pop(0), self.device)
        return self.last_real

    def take_data_wait(self) -> float:
        """Seconds spent waiting for data since the last call (the metrics line's window)."""
        waited, self.data_wait = self.data_wait, 0.0
        return waited


def describe_data_failure(spec: DataSpec, error: Exception) -> str:
    """One line for a reader's failure: a DataError says it all; a worker's exception arrives as
    its whole traceback, whose last line says what happened."""
    if isinstance(error, DataError):
        return str(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"--data {spec}: reading failed ({type(error).__name__}: {lines[-1] if lines else 'no message'})"
