"""train/wgangp.py end to end: the debug run, resume, two processes, toy-data mode coverage."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import assert_resumed_like_whole, completed, run_script
from train.data.generated import toy_modes
from train.report.metrics import read_metrics

LOSS_KEYS = ("d_loss", "g_loss", "gp", "wdist")




def test_debug_run_leaves_config_metrics_samples_and_checkpoints(wgangp_run):
    config = json.loads((wgangp_run / "config.json").read_text())
    assert config["debug"] is True and config["model"] == "dcgan" and config["gp_weight"] == 10.0
    records = read_metrics(wgangp_run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(5, 41, 5))
    for record in records:
        assert set(LOSS_KEYS + ("step", "img_per_s", "data_wait_frac")) <= set(record)
        assert all(np.isfinite(record[k]) for k in LOSS_KEYS) and record["img_per_s"] > 0
    assert records[-1]["world_size"] == 1
    for step in (20, 40):
        image = Image.open(wgangp_run / "samples" / f"step_{step:06d}.png")
        assert image.size == (4 * 34 + 2, 4 * 34 + 2)  # 16 fixed-noise samples, 32 px, 2 px padding
    checkpoints = sorted(p.name for p in (wgangp_run / "checkpoints").iterdir())
    assert checkpoints == ["step_000020", "step_000040"]
    files = {p.name for p in (wgangp_run / "checkpoints" / "step_000040").iterdir()}
    assert {"model.safetensors", "model_1.safetensors", "ema.safetensors", "train_state_0.pt"} <= files
    torch.load(wgangp_run / "checkpoints" / "step_000040" / "train_state_0.pt", weights_only=True)


def test_generate_writes_a_grid_from_the_ema_generator(run, wgangp_run, tmp_path):
    completed(run("train/generate.py", "--run", str(wgangp_run), "--n", "9", "--output", str(tmp_path / "grid.png")))
    assert Image.open(tmp_path / "grid.png").size == (3 * 34 + 2, 3 * 34 + 2)
    refused = run("train/generate.py", "--run", str(wgangp_run), "--n", "9", "--output", str(tmp_path / "x.jpg"))
    assert refused.returncode != 0 and "change the file extension" in refused.stderr


def test_generate_writes_raw_uint8_samples_to_npy_matching_the_grid(wgangp_run, tmp_path):
    from train.generate import main as generate

    for output in ("s.npy", "grid.png"):
        assert generate(["--run", str(wgangp_run), "--n", "9", "--output", str(tmp_path / output)]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (9, 3, 32, 32) and samples.dtype == np.uint8
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    for i, sample in enumerate(samples):  # the grid's tiles (2 px frames), pixel for pixel
        row, column = divmod(i, 3)
        tile = grid[2 + 34 * row: 34 + 34 * row, 2 + 34 * column: 34 + 34 * column]  # 32 px, 2 px frames
        np.testing.assert_array_equal(sample.transpose(1, 2, 0), tile)


def test_resumed_run_continues_exactly_like_an_uninterrupted_one(run, tmp_path):
    # A log window (2 steps) that straddles the interruption (step 3) must still give the same means.
    common = ["--debug", "--ckpt-every", "3", "--log-every", "2", "--sample-every", "100"]
    completed(run("train/wgangp.py", *common, "--max-steps", "6", "--out", str(tmp_path / "whole")))
    completed(run("train/wgangp.py", *common, "--max-steps", "3", "--out", str(tmp_path / "split")))
    resumed = completed(run("train/wgangp.py", "--resume", "--max-steps", "6", "--out", str(tmp_path / "split")))
    assert "resumed from step 3" in resumed.stdout

    assert [r["step"] for r in read_metrics(tmp_path / "whole" / "metrics.jsonl")] == [2, 4, 6]
    # the fixed evaluation noise survives the resume: the final grids are the same picture
    assert_resumed_like_whole(tmp_path / "whole", tmp_path / "split", LOSS_KEYS)


def test_metrics_logged_after_the_last_checkpoint_are_not_repeated_on_resume(run, tmp_path):
    out = tmp_path / "run"
    common = ["--debug", "--ckpt-every", "2", "--log-every", "1", "--sample-every", "100"]
    completed(run("train/wgangp.py", *common, "--max-steps", "4", "--out", str(out)))
    shutil.rmtree(out / "checkpoints" / "step_000004")  # as if killed after logging step 4
    completed(run("train/wgangp.py", "--resume", "--out", str(out)))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]


@pytest.mark.slow  # the session's 2-rank launch: 11 s of the inner loop, run by the whole suite
def test_accelerate_launch_cpu_with_two_processes_trains_on_two_ranks(two_rank_run):
    """Accelerate starts one process for --cpu; the trainer hands over to torchrun with two."""
    assert "running 2 CPU processes on this machine (2 on 1) with torchrun" in two_rank_run.output
    assert read_metrics(two_rank_run.out / "metrics.jsonl")[-1]["world_size"] == 2
    files = {p.name for p in (two_rank_run.out / "checkpoints" / "step_000012").iterdir()}
    assert {"random_states_1.pkl", "train_state_1.pt"} <= files


@pytest.mark.slow
def test_wgangp_covers_all_eight_gaussian_modes(run, tmp_path):
    from train.generate import main as generate

    out = tmp_path / "toy"
    # The short version of bench/modes.py's 8-Gaussian rows (3,000 steps, every seed): at 200 steps of
    # batch 128 seeds 0, 1 and 2 put at least 7, 9 and 6 of 2,000 samples within 3 std of every mode
    # (batch 256: 7, 10 and 11, in twice the time).
    completed(run("train/wgangp.py", "--data", "toy:8gaussians", "--max-steps", "200", "--batch-size", "128", "--log-every", "50",
                  "--out", str(out), timeout=600))
    assert generate(["--run", str(out), "--n", "2000", "--output", str(tmp_path / "points.npy")]) == 0
    points = torch.from_numpy(np.load(tmp_path / "points.npy"))
    assert points.shape == (2000, 2)
    modes, std = toy_modes("8gaussians")
    distance, nearest = torch.cdist(points, modes).min(dim=1)
    on_mode = distance < 3 * std
    per_mode = torch.bincount(nearest[on_mode], minlength=8)
    assert (per_mode >= 5).all(), f"samples within 3 std of each mode: {per_mode.tolist()}"


@pytest.mark.slow  # a trainer process with two decoding workers: the whole suite's, not the inner loop's
def test_training_from_parquet_shards_logs_data_counters(tmp_path):
    from tests.fixtures import write_parquet_shards

    glob = write_parquet_shards(tmp_path / "shards", rows=400, shards=4, corrupt_every=100)
    out = tmp_path / "run"
    args = ["--debug", "--data", f"parquet:{glob}", "--resolution", "64", "--max-steps", "3", "--log-every", "1", "--workers", "2"]
    # A process of its own: the decoding workers' warnings go to its stderr.
    result = completed(run_script("train/wgangp.py", *args, "--out", str(out)))
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[-1]["data_read"] >= 3 * 5 * 8 and records[-1]["data_skipped"] >= 0
    assert 0 <= records[-1]["data_wait_frac"] < 1
    assert "smaller (32px) than --resolution 64" in result.stderr  # the fixture is 32 px: warned, upsampled
    assert " on one process, " in result.stdout and "1 processes" not in result.stdout


def test_a_dataset_with_five_percent_corrupt_rows_stops_training_with_the_count(run, tmp_path):
    from tests.fixtures import write_parquet_shards

    glob = write_parquet_shards(tmp_path / "shards", rows=1200, shards=2, corrupt_every=20)
    args = ["--debug", "--data", f"parquet:{glob}", "--resolution", "64", "--batch-size", "40", "--log-every", "1"]
    result = run("train/wgangp.py", *args, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "rows read so far" in result.stderr and "are corrupt, truncated or not images" in result.stderr
