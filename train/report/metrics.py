"""Scalars per log step: a window of on-device sums reduced across ranks, mirrored to metrics.jsonl."""
import errno
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from train.common.atomic import atomic_write_text

if TYPE_CHECKING:
    from accelerate import Accelerator


METRICS_FILE = "metrics.jsonl"


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
    the checkpoint's step are dropped first, so a step logged before a crash is not logged twice.
    Each line is written whole or not at all (a full disk leaves the file as it was)."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        kept = []
        if resume_step is not None and self.path.exists():
            kept = [line for line in read_lines(self.path) if json.loads(line)["step"] <= resume_step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        data = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                if os.write(fd, data) != len(data):  # a short write: the disk filled up mid-line
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


class MetricsDamaged(ValueError):
    """metrics.jsonl holds a line that is no record, before its last line: not a write cut short by a
    crash (only the last line can be that), so the file was edited or damaged. Names the line."""


def read_lines(path: Path) -> list[str]:
    """The file's lines, each a JSON record with its step; a last line cut short (a process killed
    mid-write) is left out. MetricsDamaged names the first other line that is not a record: read
    whole before a resume rewinds the file, so that a damaged one stops the resume before it writes."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise MetricsDamaged(f"{path} is not a file; move it away (the run's log of losses and scores is that file)")
    numbered = [(number, line) for number, line in enumerate(path.read_bytes().split(b"\n"), 1) if line.strip()]
    lines = []
    for number, line in numbered:
        problem = _record_problem(line)
        if problem is None:
            lines.append(line.decode())
        elif number != numbered[-1][0]:
            raise MetricsDamaged(f"{path} line {number} {problem}; repair or delete that line (only a last line cut short"
                                 " by a crash is passed over)")
    return lines


def _record_problem(line: bytes) -> str | None:
    try:
        record = json.loads(line.decode())
    except UnicodeDecodeError:
        return "is not text (not UTF-8)"
    except json.JSONDecodeError as error:  # json's reasons ending in "at" expect the place after them
        return f"is not a JSON record ({error.msg.removesuffix(' at')}, column {error.colno})"
    if not isinstance(record, dict) or type(record.get("step")) is not int:
        return "is not a JSON record with a step"
    return None


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in read_lines(path)]
