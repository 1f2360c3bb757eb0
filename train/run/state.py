"""What each rank checkpoints besides the networks, optimizers and RNGs that Accelerate saves."""
from typing import Any

import torch

from train.data import BatchStream
from train.gan.objectives import Objective
from train.report.metrics import StatWindow
from train.report.monitor import CollapseMonitor


class TrainState:
    """Where this rank's run is: the step, its latent stream, its data position, the open log
    window, the objective's own counters, the collapse monitor and the W&B run id. Plain tensors
    and Python values only, so a checkpoint loads with torch.load(weights_only=True).

    Resumed on another number of processes, a rank takes the run's shared state (step, counters,
    objective, monitor, run id) and starts its own streams afresh (`restored_streams` False): the
    data is split anew over the new number of processes, each share read from its beginning, and
    the latents drawn from the rank's seed; the weights, optimizers and EMA continue as saved."""

    def __init__(self, *, latent_rng: torch.Generator, stream: BatchStream, window: StatWindow,
                 objective: Objective, monitor: CollapseMonitor, run_id: str, world_size: int = 1):
        self.world_size = world_size
        self.restored_streams = False
        self.step, self.skipped_steps = 0, 0
        self.nonfinite_streak, self.rollbacks = 0, 0  # non-finite steps in a row; rollbacks so far
        self.latent_rng, self.stream, self.window = latent_rng, stream, window
        self.objective, self.monitor, self.run_id = objective, monitor, run_id

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "noise_rng": self.latent_rng.get_state(),
            "data": self.stream.state_dict(),
            "window": self.window.state_dict(),
            "skipped": self.skipped_steps,
            "nonfinite_streak": self.nonfinite_streak,
            "rollbacks": self.rollbacks,
            "objective": self.objective.state_dict(),
            "monitor": self.monitor.state_dict(),
            "wandb_run_id": self.run_id,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A rank's saved state: all of it when saved by as many processes, else the shared part."""
        self.step = int(state["step"])
        self.restored_streams = int(state["world_size"]) == self.world_size
        if self.restored_streams:
            self.latent_rng.set_state(state["noise_rng"])
            self.stream.load_state_dict(state["data"])
            self.window.load_state_dict(state["window"], self.latent_rng.device)
        self.skipped_steps = int(state["skipped"])
        self.nonfinite_streak, self.rollbacks = int(state["nonfinite_streak"]), int(state["rollbacks"])
        self.objective.load_state_dict(state["objective"])
        self.monitor.load_state_dict(state["monitor"])
        self.run_id = state["wandb_run_id"]
