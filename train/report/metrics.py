"""Scalars per log step: a window of on-device sums reduced across ranks, mirrored to metrics.jsonl."""
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from train.common.atomic import atomic_write_text

if TYPE_CHECKING:
    from accelerate import Accelerator


class StatWindow:
    """Sums of per-step statistics since the last log line, kept as tensors (no host sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0) + value.detach().float()
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self, accelerator: "Accelerator") -> dict[str, float]:
        """Mean over the window and over all ranks (collective)."""
        keys = sorted(self.sums)
        local = torch.stack([self.sums[k] / self.counts[k] for k in keys]).to(accelerator.device)
        return dict(zip(keys, accelerator.reduce(local, reduction="mean").tolist()))

    def reset(self) -> None:
        self.sums, self.counts = {}, {}

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.counts = dict(state["counts"])


class MetricsFile:
    """metrics.jsonl, one JSON object per log step. A new run starts it empty; on resume, lines past
    the checkpoint's step are dropped first, so a step logged before a crash is not logged twice."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        kept = []
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
