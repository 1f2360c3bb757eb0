"""Divergence: a run that keeps producing non-finite steps goes back to its newest whole checkpoint,
a bounded number of times, then ends as diverged."""
from pathlib import Path

from accelerate import Accelerator

from train.report.reporter import Reporter
from train.run.checkpoint import agreed_whole_checkpoint, load_weights
from train.run.ema import GeneratorEMA
from train.run.outcome import RunEnd, RunStatus
from train.run.state import TrainState


class Rollback:
    """After `patience` non-finite steps in a row (--nonfinite-patience), the weights, optimizers
    and EMA go back to the newest whole checkpoint, at most `max_rollbacks` times (--max-rollbacks);
    the step count, the data position and the latent stream go on, so the batches that led there are
    not replayed and no step is logged twice."""

    def __init__(self, accelerator: Accelerator, out: Path, ema: GeneratorEMA, reporter: Reporter,
                 patience: int, max_rollbacks: int):
        self.accelerator, self.out, self.ema, self.reporter = accelerator, out, ema, reporter
        self.patience, self.max_rollbacks = patience, max_rollbacks

    def after_step(self, state: TrainState, step: int) -> RunEnd | None:
        """Roll back when the streak of non-finite steps is long enough; a RunEnd when it cannot."""
        if state.nonfinite_streak < self.patience:
            return None
        if state.rollbacks >= self.max_rollbacks:
            return RunEnd(
                RunStatus.DIVERGED, step,
                f"{state.nonfinite_streak} non-finite steps in a row after {state.rollbacks} rollbacks",
            )
        checkpoint = agreed_whole_checkpoint(self.accelerator, self.out, "rolling back to")[0]
        if checkpoint is None:
            return RunEnd(RunStatus.DIVERGED, step, f"{state.nonfinite_streak} non-finite steps in a row, no checkpoint to roll back to")
        self.ema.load_state_dict(load_weights(self.accelerator, checkpoint))
        state.nonfinite_streak, state.rollbacks = 0, state.rollbacks + 1
        self.reporter.alert(step, [
            f"divergence: {self.patience} non-finite steps in a row; weights, optimizers"
            f" and EMA rolled back to {checkpoint.name} (rollback {state.rollbacks} of at most"
            f" {self.max_rollbacks}); training goes on with new data"
        ])
        return None
