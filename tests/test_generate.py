"""train/generate.py: interpolation strips and latent-walk GIFs from a run's EMA generator, and the
outputs it refuses in one line (too large, or where nothing can be written).

(The plain grid and .npy outputs are covered with the trainer, in tests/test_wgangp.py.)
"""
import math
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from tests.conftest import completed
from tests.fixtures import unwritable_folder
from train.generate import (
    latent_draws,
    loop_latents,
    main,
    sample_chunks,
    slerp,
    write_npy,
)
from train.report.fid import to_uint8
from train.run.config import DEBUG_PRESET
from train.run.finished import FinishedRun
from train.run.networks import render_samples

SIZE, PADDING = DEBUG_PRESET["resolution"], 2  # the debug runs' images; image_grid's padding



@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from tests.conftest import train_in_process

    out = tmp_path_factory.mktemp("generate") / "toy"
    args = ["--debug", "--data", "toy:8gaussians", "--max-steps", "2", "--ckpt-every", "2", "--sample-every", "2"]
    completed(train_in_process("train/wgangp.py", *args, "--out", str(out)))
    return out


def generator_pixels(run, latents: torch.Tensor) -> np.ndarray:
    """What the run's EMA generator draws for `latents`, as image_grid turns it into pixels: (N, H, W, 3)."""
    generator, _ = FinishedRun(run).ema_generator()
    images = render_samples(generator, latents).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy().astype(np.int16)


def cell(picture: Image.Image, row: int, column: int) -> np.ndarray:
    left, top = PADDING + column * (SIZE + PADDING), PADDING + row * (SIZE + PADDING)
    return np.asarray(picture.convert("RGB").crop((left, top, left + SIZE, top + SIZE))).astype(np.int16)


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def gif_frames(path) -> list[Image.Image]:
    with Image.open(path) as gif:
        return [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]


def test_slerp_is_exact_at_the_ends_and_keeps_gaussian_latents_on_their_shell():
    start, end = latent_draws(2, 1000, 128, seed=0)
    path = slerp(start, end, torch.linspace(0, 1, 5))
    assert torch.equal(path[0], start) and torch.equal(path[-1], end)
    # The chord's midpoint dips to about 1/sqrt(2) of the radius; the arc's stays near sqrt(d).
    radius = math.sqrt(128)
    assert path[2].norm(dim=-1).mean() == pytest.approx(radius, rel=0.02)
    assert ((start + end) / 2).norm(dim=-1).mean() == pytest.approx(radius / math.sqrt(2), rel=0.02)
    parallel = slerp(start[:1], 2 * start[:1], torch.tensor([0.5]))  # angle 0: no 0/0
    torch.testing.assert_close(parallel[0], 1.5 * start[:1])


def test_latent_loop_passes_through_every_keyframe_and_closes():
    keys = latent_draws(4, 3, 16, seed=7)
    walk = loop_latents(3, frames=12, keyframes=4, latent_dim=16, seed=7)
    assert walk.shape == (12, 3, 16)
    for k in range(4):
        torch.testing.assert_close(walk[3 * k], keys[k])
    for f in range(12):  # each step a fraction of its segment's chord, the last one leading back to keyframe 0
        segment = (keys[f // 3] - keys[(f // 3 + 1) % 4]).norm(dim=-1)
        assert ((walk[f] - walk[(f + 1) % 12]).norm(dim=-1) < 0.5 * segment).all()
    assert torch.equal(latent_draws(1, 3, 16, seed=7)[0], keys[0])  # the grid's latents for that seed


def test_interpolation_strip_rows_run_from_the_grid_latents_to_a_second_draw(run, wgangp_run, tmp_path):
    strip = tmp_path / "strip.png"
    completed(run("train/generate.py", "--run", str(wgangp_run), "--n", "3", "--interpolate", "5", "--seed", "4", "--output", str(strip)))
    picture = Image.open(strip)
    assert picture.size == (5 * (SIZE + PADDING) + PADDING, 3 * (SIZE + PADDING) + PADDING)

    start, end = latent_draws(2, 3, FinishedRun(wgangp_run).config.latent_dim, seed=4)
    expected_start, expected_end = generator_pixels(wgangp_run, start), generator_pixels(wgangp_run, end)
    for row in range(3):
        # at most 1 level off: a conv's rounding may depend on the batch size; other latents are further
        assert np.abs(cell(picture, row, 0) - expected_start[row]).max() <= 1
        assert np.abs(cell(picture, row, 4) - expected_end[row]).max() <= 1
        assert np.abs(cell(picture, row, 0) - expected_end[row]).max() > 1
        assert np.abs(cell(picture, row, 0) - expected_start[(row + 1) % 3]).max() > 1
        steps = [mean_difference(cell(picture, row, c), cell(picture, row, c + 1)) for c in range(4)]
        assert 0 < max(steps) < mean_difference(cell(picture, row, 0), cell(picture, row, 4))

    # same seed, same bytes (here from a second process); another seed, another strip
    main(["--run", str(wgangp_run), "--n", "3", "--interpolate", "5", "--seed", "4", "--output", str(tmp_path / "again.png")])
    assert (tmp_path / "again.png").read_bytes() == strip.read_bytes()
    main(["--run", str(wgangp_run), "--n", "3", "--interpolate", "5", "--seed", "5", "--output", str(tmp_path / "other.png")])
    assert (tmp_path / "other.png").read_bytes() != strip.read_bytes()


def test_gif_walks_the_grid_through_the_keyframes_in_small_steps(run, wgangp_run, tmp_path):
    gif = tmp_path / "walk.gif"
    args = ["--n", "4", "--gif", "--frames", "8", "--keyframes", "2", "--fps", "10", "--seed", "3"]
    completed(run("train/generate.py", "--run", str(wgangp_run), *args, "--output", str(gif)))
    with Image.open(gif) as opened:
        assert opened.n_frames == 8 and opened.info["loop"] == 0 and opened.info["duration"] == 100
    frames = gif_frames(gif)
    assert frames[0].size == (2 * (SIZE + PADDING) + PADDING,) * 2  # 4 samples: a 2 x 2 grid

    keys = latent_draws(2, 4, FinishedRun(wgangp_run).config.latent_dim, seed=3)
    drawn = [generator_pixels(wgangp_run, key) for key in keys]
    for frame, k in ((frames[0], 0), (frames[4], 1)):  # 8 frames, 2 keyframes: one every 4
        for i in range(4):
            # A GIF frame holds 256 colours, so only nearly equal: measured 4x closer to its own
            # latent's image than to any other sample's (this run and one trained 40 steps).
            error = mean_difference(cell(frame, i // 2, i % 2), drawn[k][i])
            others = [drawn[j][m] for j in (0, 1) for m in range(4) if (j, m) != (k, i)]
            assert error < 0.5 * min(mean_difference(cell(frame, i // 2, i % 2), other) for other in others)
    pixels = [np.asarray(frame).astype(np.int16) for frame in frames]
    steps = [mean_difference(pixels[f], pixels[(f + 1) % 8]) for f in range(8)]  # the last frame leads back to the first
    assert 0 < min(steps) and max(steps) < mean_difference(pixels[0], pixels[4])

    main(["--run", str(wgangp_run), *args, "--output", str(tmp_path / "again.gif")])
    assert (tmp_path / "again.gif").read_bytes() == gif.read_bytes()


def test_toy_runs_animate_the_scatter_plot_but_have_no_strip(toy_run, tmp_path, capsys):
    main(["--run", str(toy_run), "--gif", "--n", "50", "--frames", "6", "--keyframes", "3", "--output", str(tmp_path / "toy.gif")])
    frames = gif_frames(tmp_path / "toy.gif")
    assert len(frames) == 6 and frames[0].size == (512, 512)
    assert main(["--run", str(toy_run), "--interpolate", "4", "--output", str(tmp_path / "strip.png")]) == 2
    assert re.match(r"error: --interpolate: .* is a toy run .*use --gif", capsys.readouterr().err)
    assert not (tmp_path / "strip.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--interpolate", "4", "--output", "x.gif"], "--output x.gif: --interpolate writes .png files; change the file extension"),
        (["--gif", "--output", "x.png"], "--output x.png: --gif writes .gif files; change the file extension"),
        (["--output", "x.gif"], "this run writes .npy or .png files; change the file extension; or add --gif"),
        (["--interpolate", "1", "--output", "x.png"], "--interpolate 1: must be at least 2"),
        (["--gif", "--frames", "3", "--keyframes", "4", "--output", "x.gif"], "--frames 3: must be at least 4"),
        (["--gif", "--fps", "0", "--output", "x.gif"], "--fps 0.0: must be above 0"),
    ],
)
def test_bad_outputs_and_counts_are_refused_naming_the_flag(wgangp_run, tmp_path, capsys, args, message):
    args = [a if a not in ("x.gif", "x.png") else str(tmp_path / a) for a in args]
    assert main(["--run", str(wgangp_run), *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message.replace("x.", str(tmp_path / "x.")) in error
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "8", "--output", "x.png"], "--frames only apply with --gif"),
        (["--gif", "--interpolate", "3", "--output", "x.gif"], "not allowed with argument"),
    ],
)
def test_animation_flags_need_gif_and_the_modes_exclude_each_other(wgangp_run, capsys, args, message):
    with pytest.raises(SystemExit) as refused:
        main(["--run", str(wgangp_run), *args])
    assert refused.value.code == 2 and message in capsys.readouterr().err


def test_a_damaged_ema_file_is_named_and_the_checkpoint_before_it_used(wgangp_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(wgangp_run, run)
    latest = run / "checkpoints" / "step_000040" / "ema.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # torn
    assert main(["--run", str(run), "--n", "4", "--output", str(tmp_path / "grid.png")]) == 0
    assert f"warning: {latest} cannot be read" in capsys.readouterr().err
    _, used = FinishedRun(run).ema_generator()
    assert used.name == "step_000020"

    (run / "checkpoints" / "step_000020" / "ema.safetensors").write_bytes(b"\0" * 64)  # zeroed: none left whole
    assert main(["--run", str(run), "--n", "4", "--output", str(tmp_path / "other.png")]) == 2
    assert "no checkpoint with a readable ema.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "other.png").exists()
    explicit = ["--checkpoint", str(latest.parent)]
    assert main(["--run", str(run), *explicit, "--n", "4", "--output", str(tmp_path / "other.png")]) == 2
    assert f"error: --checkpoint {latest.parent}: {latest} cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--n", "0"], ["--n", "-3"]])
def test_bad_counts_and_runs_without_checkpoints_exit_2(wgangp_run, tmp_path, capsys, args):
    assert main(["--run", str(wgangp_run), *args, "--output", str(tmp_path / "g.png")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --n {args[1]}: must be at least 1")
    empty = tmp_path / "empty"
    shutil.copytree(wgangp_run, empty, ignore=shutil.ignore_patterns("checkpoints"))
    assert main(["--run", str(empty), "--output", str(tmp_path / "g.png")]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


@pytest.mark.parametrize("place", ["under a file", "read-only"])
def test_an_output_that_cannot_be_written_is_one_line_before_any_work(wgangp_run, tmp_path, request, capsys, place):
    folder = unwritable_folder(place, tmp_path, request)
    reason = f"{tmp_path / 'notes'} is a file" if place == "under a file" else f"not writable ({folder} is on a read-only file system)"
    for output in (folder / "grid.png", folder / "samples.npy", folder / "loop.gif"):
        args = ["--gif", "--frames", "4", "--keyframes", "2"] if output.suffix == ".gif" else []
        assert main(["--run", str(wgangp_run), *args, "--n", "4", "--output", str(output)]) == 2
        assert capsys.readouterr().err.splitlines() == [f"error: --output {output}: {reason}; choose another --output"]


def test_a_write_that_fails_midway_is_one_line_and_leaves_no_file(wgangp_run, tmp_path, request, capsys):
    folder = unwritable_folder("tiny", tmp_path, request)  # room for the check, not for a grid of 64
    assert main(["--run", str(wgangp_run), "--output", str(folder / "grid.png")]) == 2
    line = f"error: --output {folder / 'grid.png'}: could not write it (No space left on device); free space there or choose another --output"
    assert capsys.readouterr().err.splitlines() == [line]
    assert not list(folder.iterdir())


HUGE = "300000000"  # its latents alone would take 77 GB
NO_DISK_HOLDS = "1000000000000000"  # 3 exabytes of 32-px images


@pytest.mark.parametrize(
    "args, output, message",
    [
        ([], "grid.png", f"--n {HUGE}: a grid of {HUGE} samples of 32 px would be a picture of"),
        (["--interpolate", "8"], "strip.png", f"--n {HUGE}: a strip of {HUGE} rows of 8 samples of 32 px would be a picture of"),
        (["--gif"], "loop.gif", f"--n {HUGE}: a grid of {HUGE} samples of 32 px would be a picture of"),
        ([], "samples.npy", f"--n {NO_DISK_HOLDS}: the .npy would take 3,072,000,000.0 GB, and"),
    ],
)
def test_more_samples_than_a_picture_or_the_disk_holds_are_refused_in_one_line(wgangp_run, tmp_path, capsys, args, output, message):
    n = NO_DISK_HOLDS if output.endswith(".npy") else HUGE
    assert main(["--run", str(wgangp_run), *args, "--n", n, "--output", str(tmp_path / output)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert not list(tmp_path.iterdir())


def test_an_npy_drawn_and_written_in_chunks_holds_the_samples_of_one_draw(wgangp_run, tmp_path):
    generator, _ = FinishedRun(wgangp_run).ema_generator()
    chunks = sample_chunks(generator, n=40, latent_dim=64, seed=3, chunk=16)
    write_npy(tmp_path / "s.npy", (40, 3, SIZE, SIZE), np.uint8, (to_uint8(samples).numpy() for samples in chunks))
    whole = to_uint8(render_samples(generator, latent_draws(1, 40, 64, seed=3)[0])).numpy()
    assert np.array_equal(np.load(tmp_path / "s.npy"), whole)
