"""The dashboard's pictures on disk, whatever the W&B mode: progress.gif and loss.png in --out.

Both are rebuilt from what the run already wrote (samples/*.png, metrics.jsonl), so a resumed run's
pictures cover the whole run, and both are written atomically.
"""
import math
import os
from pathlib import Path

from PIL import Image

from train.metrics import read_metrics

GIF_MAX_SIDE = 512  # a 1024 px run's 8x8 grid is 8 k pixels wide: frames are shrunk to this
GIF_FRAME_MS = 200
SMOOTHING = 0.9  # TensorBoard-style exponential smoothing of long curves; short ones less
LOSS_KEYS = ("d_loss", "g_loss", "wdist", "gp", "hinge", "recon")


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    write(tmp)
    os.replace(tmp, path)


def write_progress_gif(samples_dir: Path, path: Path) -> int:
    """The fixed-noise grids in step order as one animation; returns the number of frames."""
    frames = []
    for png in sorted(Path(samples_dir).glob("step_*.png")):
        with Image.open(png) as image:
            frame = image.convert("RGB")
        scale = GIF_MAX_SIDE / max(frame.size)
        if scale < 1:
            frame = frame.resize((round(frame.width * scale), round(frame.height * scale)), Image.Resampling.LANCZOS)
        frames.append(frame)
    if frames:
        _atomic(path, lambda tmp: frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0))
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


def write_loss_plot(metrics_path: Path, path: Path) -> bool:
    """One panel per loss in metrics.jsonl: the raw curve faint, the smoothed curve over it."""
    if not Path(metrics_path).is_file():
        return False
    records = [r for r in read_metrics(metrics_path) if "d_loss" in r or "g_loss" in r]
    keys = [k for k in LOSS_KEYS if any(k in r for r in records)]
    if not keys:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters
    from matplotlib import pyplot as plt

    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
        steps, values = [p[0] for p in points], [p[1] for p in points]
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=1)
        ax.plot(steps, smooth(values), color="tab:blue", linewidth=1.5)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    figure.tight_layout()
    _atomic(path, lambda tmp: figure.savefig(tmp, dpi=100))
    plt.close(figure)
    return True
