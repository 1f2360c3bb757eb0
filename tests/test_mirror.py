"""train/mirror.py: progress.gif and loss.png, rebuilt from what the run wrote."""
import json

import pytest
import torch
from PIL import Image

from train.mirror import GIF_MAX_SIDE, smooth, write_loss_plot, write_progress_gif
from train.samples import save_samples


def test_progress_gif_has_one_frame_per_grid_in_step_order_and_is_shrunk(tmp_path):
    for step, value in ((200, 1.0), (100, -1.0), (300, 0.0)):
        save_samples(torch.full((64, 3, 128, 128), value), tmp_path / "samples" / f"step_{step:06d}.png")
    assert write_progress_gif(tmp_path / "samples", tmp_path / "progress.gif") == 3
    with Image.open(tmp_path / "progress.gif") as gif:
        assert gif.n_frames == 3 and max(gif.size) == GIF_MAX_SIDE
        first = gif.convert("L").getpixel((gif.width // 2 + 3, gif.height // 2 + 3))
        assert first < 10  # step 100, all -1: black
    assert not list(tmp_path.glob("*.tmp*"))


def test_loss_plot_draws_every_loss_in_the_metrics(tmp_path):
    lines = [{"step": s, "d_loss": -s / 10, "g_loss": s / 20, "gp": 0.1, "img_per_s": 5.0} for s in range(5, 105, 5)]
    lines.append({"step": 100, "fid": 80.0})  # an evaluation line has no losses
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert write_loss_plot(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    with Image.open(tmp_path / "loss.png") as image:
        assert image.width > image.height > 100
    assert not write_loss_plot(tmp_path / "missing.jsonl", tmp_path / "other.png")


def test_smoothing_keeps_a_constant_and_leaves_short_curves_alone():
    assert smooth([2.0] * 50) == pytest.approx([2.0] * 50)
    assert smooth([1.0, 5.0, 2.0]) == [1.0, 5.0, 2.0]
    noisy = [(-1) ** i for i in range(200)]
    assert max(abs(v) for v in smooth(noisy)[20:]) < 0.2
