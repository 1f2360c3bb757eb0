"""train/report/mirror.py: progress.gif and loss.png, kept up incrementally and rebuilt on resume."""

import pytest
import torch
from PIL import Image

from train.report.metrics import MetricsFile
from train.report.mirror import (
    GIF_MAX_SIDE,
    Mirror,
    smooth,
    write_loss_plot,
    write_progress_gif,
)
from train.report.samples import samples_picture, save_png


def test_progress_gif_has_one_frame_per_grid_in_step_order_and_is_shrunk(tmp_path):
    for step, value in ((200, 1.0), (100, -1.0), (300, 0.0)):
        save_png(samples_picture(torch.full((64, 3, 128, 128), value)), tmp_path / "samples" / f"step_{step:06d}.png")
    assert write_progress_gif(tmp_path / "samples", tmp_path / "progress.gif") == 3
    with Image.open(tmp_path / "progress.gif") as gif:
        assert gif.n_frames == 3 and max(gif.size) == GIF_MAX_SIDE
        first = gif.convert("L").getpixel((gif.width // 2 + 3, gif.height // 2 + 3))
        assert first < 10  # step 100, all -1: black
    assert not list(tmp_path.glob("*.tmp*"))


def test_loss_plot_draws_every_loss_in_the_metrics(tmp_path):
    lines = [{"step": s, "d_loss": -s / 10, "g_loss": s / 20, "gp": 0.1, "img_per_s": 5.0} for s in range(5, 105, 5)]
    lines.append({"step": 100, "fid": 80.0})  # an evaluation line has no losses
    assert write_loss_plot(lines, tmp_path / "loss.png")
    with Image.open(tmp_path / "loss.png") as image:
        assert image.width > image.height > 100
    assert not write_loss_plot([{"step": 100, "fid": 80.0}], tmp_path / "other.png")
    assert not (tmp_path / "other.png").exists()


def test_smoothing_keeps_a_constant_and_leaves_short_curves_alone():
    assert smooth([2.0] * 50) == pytest.approx([2.0] * 50)
    assert smooth([1.0, 5.0, 2.0]) == [1.0, 5.0, 2.0]
    noisy = [(-1) ** i for i in range(200)]
    assert max(abs(v) for v in smooth(noisy)[20:]) < 0.2


def grid(tmp_path, step: int, value: float) -> Image.Image:
    picture = samples_picture(torch.full((4, 3, 32, 32), value))
    save_png(picture, tmp_path / "samples" / f"step_{step:06d}.png")
    return picture


def test_each_sample_step_appends_one_frame_without_rewriting_the_earlier_ones(tmp_path):
    mirror = Mirror(tmp_path, resume_step=None)
    sizes = []
    for step, value in ((10, -1.0), (20, 0.0), (30, 1.0)):
        before = mirror.gif.read_bytes() if mirror.gif.exists() else b""
        mirror.add_grid(grid(tmp_path, step, value))
        after = mirror.gif.read_bytes()
        assert not before or after[: len(before) - 1] == before[:-1]  # all but the old trailer byte stays
        sizes.append(len(after) - len(before))
    assert max(sizes[1:]) < 2 * min(sizes[1:])  # the third grid costs what the second did
    with Image.open(mirror.gif) as gif:
        assert gif.n_frames == 3
        gif.seek(2)
        assert gif.convert("L").getpixel((10, 10)) > 245  # step 30: all +1, white


def test_a_resumed_mirror_rebuilds_the_gif_up_to_the_checkpoint_and_plots_the_kept_lines(tmp_path):
    first = Mirror(tmp_path, resume_step=None)
    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    for step in (10, 20, 30):
        first.add_grid(grid(tmp_path, step, step / 30))  # distinct grids: Pillow merges equal neighbours
        metrics.write({"step": step, "d_loss": -1.0, "g_loss": float(step)})
    # resumed from step 20: grid 30 and line 30 will be made again
    MetricsFile(tmp_path / "metrics.jsonl", resume_step=20)
    resumed = Mirror(tmp_path, resume_step=20)
    with Image.open(resumed.gif) as gif:
        assert gif.n_frames == 2
    assert [r["step"] for r in resumed.records] == [10, 20]
    resumed.add_record({"step": 30, "d_loss": -1.0, "g_loss": 30.0})
    resumed.draw_losses()
    assert resumed.plot.is_file()
    fresh = Mirror(tmp_path, resume_step=None)  # a new run over the leftovers starts both empty
    assert not fresh.gif.exists() and fresh.records == []


def test_a_torn_gif_is_made_anew_from_the_grids(tmp_path):
    mirror = Mirror(tmp_path, resume_step=None)
    for step in (10, 20):
        mirror.add_grid(grid(tmp_path, step, step / 30))
    mirror.gif.write_bytes(mirror.gif.read_bytes()[:-40])  # as if killed mid-append
    mirror.add_grid(grid(tmp_path, 30, 1.0))
    with Image.open(mirror.gif) as gif:
        assert gif.n_frames == 3


def test_the_loss_plot_is_redrawn_only_when_there_are_new_lines(tmp_path):
    mirror = Mirror(tmp_path, resume_step=None)
    mirror.add_record({"step": 10, "d_loss": -1.0, "g_loss": 1.0})
    mirror.draw_losses()  # the last step's grid
    mirror.plot.write_bytes(b"as drawn")
    mirror.draw_losses()  # the run's end, nothing logged since: not drawn again
    assert mirror.plot.read_bytes() == b"as drawn"
    mirror.add_record({"step": 20, "d_loss": -0.5, "g_loss": 2.0})
    mirror.draw_losses()
    assert Image.open(mirror.plot).size[0] > 0
