"""What the main process shows of a run: metrics.jsonl, sample grids, the local mirror and W&B.

Every method is safe to call on every rank; only the main process writes or logs anything.
"""
import contextlib
import errno
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from train.report.metrics import METRICS_FILE, MetricsFile
from train.report.mirror import Mirror
from train.report.samples import image_grid, samples_picture, save_png
from train.report.tracking import WandbRun

if TYPE_CHECKING:
    from accelerate import Accelerator

COMPARISON_IMAGES = 8  # real and fake images side by side in the comparison grid


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


class Reporter:
    """A full disk does not stop the run here: what cannot be written is left out with one warning,
    and the next checkpoint, which cannot be written either, stops the run resumably."""

    def __init__(self, accelerator: "Accelerator", out: Path, wandb_enabled: bool):
        self.accelerator = accelerator
        self.out = out
        self.main = accelerator.is_main_process
        self.disk_full = False
        self.wandb = WandbRun(accelerator, wandb_enabled)
        self.metrics: MetricsFile | None = None
        self.mirror: Mirror | None = None

    def start(self, *, resume_step: int | None, run_id: str, wandb_options: dict[str, Any]) -> None:
        if self.main:
            self.metrics = MetricsFile(self.out / METRICS_FILE, resume_step=resume_step)
            self.mirror = Mirror(self.out, resume_step)
        self.wandb.start(out=self.out, run_id=run_id, **wandb_options)

    @contextlib.contextmanager
    def _unless_disk_full(self, what: str):
        try:
            yield
        except OSError as error:
            if error.errno not in FULL_DISK:
                raise
            if not self.disk_full:
                print(f"warning: {what} not written, the disk under {self.out} is full ({error.strerror})", file=sys.stderr)
            self.disk_full = True

    def log(self, record: dict[str, Any]) -> None:
        if self.main:
            with self._unless_disk_full("metrics.jsonl line"):
                self.metrics.write(record)
            self.mirror.add_record(record)
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def samples(
        self, step: int, samples: torch.Tensor, real: torch.Tensor | None, modes: torch.Tensor | None, std: float
    ) -> None:
        """The fixed-noise grid to samples/ and the progress GIF, the loss plot redrawn, and to W&B
        the grid and a real-vs-fake comparison (first row real, second fake)."""
        if not self.main:
            return
        picture = samples_picture(samples, modes, std)
        with self._unless_disk_full("sample grid"):
            save_png(picture, self.out / "samples" / f"step_{step:06d}.png")
            self.mirror.add_grid(picture)
            self.mirror.draw_losses()
        images = {"samples": picture}
        if real is not None and modes is None:
            n = min(COMPARISON_IMAGES, len(real), len(samples))
            images["real_vs_fake"] = image_grid(torch.cat([real[:n].float().cpu(), samples[:n]]), columns=n)
        self.wandb.log_images(images, step)

    def alert(self, step: int, warnings: list[str]) -> None:
        for warning in warnings:
            self.accelerator.print(f"warning: {warning}")
            self.wandb.alert(title=f"facegan: {warning.split(':')[0]} at step {step}", text=warning)

    def finish(self, step: int, resumable: bool = False) -> None:
        if self.main:
            with self._unless_disk_full("loss plot"):
                self.mirror.draw_losses()
            self.wandb.log_video("progress", self.mirror.gif, step)
            if resumable:
                self.wandb.mark_preempting()
