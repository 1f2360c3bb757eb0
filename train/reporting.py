"""What the main process shows of a run: metrics.jsonl, sample grids, the local mirror and W&B.

Every method is safe to call on every rank; only the main process writes or logs anything.
"""
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from train.metrics import MetricsFile
from train.mirror import write_loss_plot, write_progress_gif
from train.samples import image_grid, save_samples
from train.tracking import WandbRun

COMPARISON_IMAGES = 8  # real and fake images side by side in the comparison grid


class Reporter:
    def __init__(self, accelerator: Accelerator, out: Path, wandb_enabled: bool):
        self.accelerator = accelerator
        self.out = out
        self.main = accelerator.is_main_process
        self.wandb = WandbRun(accelerator, wandb_enabled)
        self.metrics: MetricsFile | None = None

    def start(self, *, resume_step: int | None, run_id: str, wandb_options: dict[str, Any]) -> None:
        if self.main:
            self.metrics = MetricsFile(self.out / "metrics.jsonl", resume_step=resume_step)
        self.wandb.start(out=self.out, run_id=run_id, **wandb_options)

    def log(self, record: dict[str, Any]) -> None:
        if self.main:
            self.metrics.write(record)
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def samples(
        self, step: int, samples: torch.Tensor, real: torch.Tensor | None, modes: torch.Tensor | None, std: float
    ) -> None:
        """The fixed-noise grid to samples/, the progress GIF and loss plot rebuilt, and to W&B the
        grid and a real-vs-fake comparison (first row real, second fake)."""
        if not self.main:
            return
        picture = save_samples(samples, self.out / "samples" / f"step_{step:06d}.png", modes, std)
        self.refresh_mirror()
        images = {"samples": picture}
        if real is not None and modes is None:
            n = min(COMPARISON_IMAGES, len(real), len(samples))
            images["real_vs_fake"] = image_grid(torch.cat([real[:n].float().cpu(), samples[:n]]), columns=n)
        self.wandb.log_images(images, step)

    def alert(self, step: int, warnings: list[str]) -> None:
        for warning in warnings:
            self.accelerator.print(f"warning: {warning}")
            self.wandb.alert(title=f"facegan: {warning.split(':')[0]} at step {step}", text=warning)

    def refresh_mirror(self) -> None:
        if self.main:
            write_progress_gif(self.out / "samples", self.out / "progress.gif")
            write_loss_plot(self.out / "metrics.jsonl", self.out / "loss.png")

    def finish(self, step: int, resumable: bool = False) -> None:
        if self.main:
            self.refresh_mirror()
            self.wandb.log_video("progress", self.out / "progress.gif", step)
            if resumable:
                self.wandb.mark_preempting()

