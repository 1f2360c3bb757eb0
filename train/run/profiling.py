"""`--profile N`: a torch.profiler trace of N training steps after a warm-up, and the top operators.

The trace is TensorBoard's `.pt.trace.json` (Chrome trace format), which Perfetto
(ui.perfetto.dev) and TensorBoard's profiler plugin both open; one file per rank.
"""
import contextlib
import os
from pathlib import Path

import torch
from torch.profiler import (
    ProfilerActivity,
    profile,
    schedule,
    tensorboard_trace_handler,
)

# The first step pays one-off costs (cuDNN autotuning, allocator growth, lazy inits); the next two
# bring the caches to their steady state. The N steps after those are the ones a user asks about.
SKIP_STEPS, WARMUP_STEPS = 1, 2
TOP_OPERATORS = 15


def profile_steps_needed(steps: int) -> int:
    return SKIP_STEPS + WARMUP_STEPS + steps


class StepProfiler(contextlib.AbstractContextManager):
    """Call `step()` after each training step; with `steps` 0 it does nothing at all."""

    def __init__(self, steps: int, out: Path, rank: int, print_table: bool):
        self.folder = out / "profile"
        self._profiler = None
        if steps:
            # Kineto's "gpuGetDeviceCount failed" line on a machine without a GPU is noise, not an error.
            os.environ.setdefault("KINETO_LOG_LEVEL", "5" if not torch.cuda.is_available() else "2")
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self._profiler = profile(
                activities=activities,
                schedule=schedule(wait=SKIP_STEPS, warmup=WARMUP_STEPS, active=steps, repeat=1),
                on_trace_ready=self._on_ready,
                record_shapes=True,
            )
        self._rank, self._print_table, self.table = rank, print_table, None

    def _on_ready(self, prof: profile) -> None:
        tensorboard_trace_handler(str(self.folder), worker_name=f"rank{self._rank}")(prof)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.table = prof.key_averages().table(sort_by=f"self_{device}_time_total", row_limit=TOP_OPERATORS)
        if self._print_table:
            print(f"top operators over the profiled steps (trace in {self.folder}: open it in ui.perfetto.dev or TensorBoard):")
            print(self.table)

    def __enter__(self) -> "StepProfiler":
        if self._profiler is not None:
            self._profiler.__enter__()
        return self

    def step(self) -> None:
        if self._profiler is not None:
            self._profiler.step()

    def __exit__(self, *exc) -> None:
        if self._profiler is not None:
            self._profiler.__exit__(*exc)
