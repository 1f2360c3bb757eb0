"""The dashboard's pictures on disk, whatever the W&B mode: progress.gif and loss.png in --out.

Kept up incrementally: each sample grid is appended to the GIF as one frame, and the loss plot is
drawn from the log lines held in memory, so a sample step costs the same at step 1,000 and at
step 100,000. A (re)started run rebuilds both once from what the run already wrote, so a resumed
run's pictures cover the whole run.
"""
import math
from pathlib import Path
from typing import Any

from PIL import Image

from train.common.atomic import atomic_write
from train.report.gif import GifDamaged, append_gif_frame, write_gif
from train.report.metrics import read_metrics

GIF_MAX_SIDE = 512  # a 1024 px run's 8x8 grid is 8 k pixels wide: frames are shrunk to this
GIF_FRAME_MS = 200
SMOOTHING = 0.9  # TensorBoard-style exponential smoothing of long curves; short ones less
LOSS_KEYS = ("d_loss", "g_loss", "wdist", "gp", "hinge", "recon")


def gif_frame(picture: Image.Image) -> Image.Image:
    frame = picture.convert("RGB")
    scale = GIF_MAX_SIDE / max(frame.size)
    if scale < 1:
        frame = frame.resize((round(frame.width * scale), round(frame.height * scale)), Image.Resampling.LANCZOS)
    return frame


def sample_grids(samples_dir: Path, up_to_step: int | None = None) -> list[Path]:
    """The run's samples/step_*.png in step order, those after `up_to_step` left out."""
    grids = sorted(Path(samples_dir).glob("step_*.png"))
    return [p for p in grids if up_to_step is None or int(p.stem.removeprefix("step_")) <= up_to_step]


def write_progress_gif(samples_dir: Path, path: Path, up_to_step: int | None = None) -> int:
    """The fixed-noise grids in step order as one animation, made anew; returns the number of frames."""
    frames = []
    for png in sample_grids(samples_dir, up_to_step):
        with Image.open(png) as image:
            frames.append(gif_frame(image))
    if frames:
        write_gif(frames, path, GIF_FRAME_MS)
    else:
        Path(path).unlink(missing_ok=True)
    return len(frames)


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Exponential moving average with bias correction, so the first points are not pulled to 0;
    by default about ten points' memory, at most SMOOTHING (a 10-point curve is left as it is)."""
    if weight is None:
        weight = min(SMOOTHING, max(0.0, 1 - 10 / max(len(values), 1)))
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def write_loss_plot(records: list[dict[str, Any]], path: Path) -> bool:
    """One panel per loss in the log lines: the raw curve faint, the smoothed curve over it."""
    records = [r for r in records if "d_loss" in r or "g_loss" in r]
    keys = [k for k in LOSS_KEYS if any(k in r for r in records)]
    if not keys:
        return False
    # A Figure on its own Agg canvas, not pyplot: no display is needed on clusters, and pyplot's import
    # (0.9 s here) cost more than the rest of the drawing, at the end of every run.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure = Figure(figsize=(4.5 * columns, 3 * rows))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
        steps, values = [p[0] for p in points], [p[1] for p in points]
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=1)
        ax.plot(steps, smooth(values), color="tab:blue", linewidth=1.5, marker="o" if len(points) == 1 else None)  # one point: no line to draw
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    figure.tight_layout()
    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, dpi=100))
    return True


class Mirror:
    """The run's progress.gif and loss.png, from the main process."""

    def __init__(self, out: Path, resume_step: int | None):
        self.out = Path(out)
        self.gif = self.out / "progress.gif"
        self.plot = self.out / "loss.png"
        metrics = self.out / "metrics.jsonl"
        # metrics.jsonl is already rewound to the checkpoint's step; grids past it are drawn again.
        self.records = read_metrics(metrics) if resume_step is not None and metrics.is_file() else []
        self._drawn: int | None = None  # how many records loss.png shows
        write_progress_gif(self.out / "samples", self.gif, up_to_step=resume_step if resume_step is not None else -1)

    def add_record(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def add_grid(self, picture: Image.Image) -> None:
        try:
            append_gif_frame(self.gif, gif_frame(picture), GIF_FRAME_MS)
        except GifDamaged:  # a write torn by a crash: made anew once from the grids on disk
            write_progress_gif(self.out / "samples", self.gif)

    def draw_losses(self) -> None:
        """Redraws loss.png unless it already shows every record (the last step's grid, then the end)."""
        if self._drawn == len(self.records):
            return
        write_loss_plot(self.records, self.plot)
        self._drawn = len(self.records)
