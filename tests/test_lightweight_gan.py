"""train/lightweight_gan.py end to end: the debug run, generate, resume, two processes, bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TORCHRUN_CPU_ENV, assert_resumed_like_whole, completed, torchrun_cpu
from train.gan.augmented import Augmented, augmented
from train.lightweight_gan import LightweightGANConfig, make_objective
from train.report.metrics import read_metrics
from train.run.config import ConfigError, load_config
from train.run.runner import main

LOSS_KEYS = ("d_loss", "g_loss", "hinge", "recon", "d_real", "d_fake")
SCRIPT = "train/lightweight_gan.py"




def test_debug_run_leaves_config_metrics_samples_and_checkpoints(lightweight_run):
    config = json.loads((lightweight_run / "config.json").read_text())
    assert (config["model"], config["critic_steps"], config["lr"], config["betas"]) == ("lightweight", 1, 2e-4, [0.5, 0.999])
    assert config["diffaug_policy"] == "color,translation,cutout" and config["attn_resolutions"] == [16]
    records = read_metrics(lightweight_run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(5, 41, 5))
    for record in records:
        assert set(LOSS_KEYS + ("img_per_s", "data_wait_frac", "world_size")) <= set(record)
        assert all(np.isfinite(record[k]) for k in LOSS_KEYS) and record["img_per_s"] > 0
    for step in (20, 40):
        assert Image.open(lightweight_run / "samples" / f"step_{step:06d}.png").size == (4 * 66 + 2, 4 * 66 + 2)
    assert sorted(p.name for p in (lightweight_run / "checkpoints").iterdir()) == ["step_000020", "step_000040"]
    state = torch.load(lightweight_run / "checkpoints" / "step_000040" / "train_state_0.pt", weights_only=True)
    assert state["objective"] == {"critic_calls": 40}


def test_generate_writes_a_grid_from_the_lightweight_ema_generator(run, lightweight_run, tmp_path):
    completed(run("train/generate.py", "--run", str(lightweight_run), "--n", "4", "--output", str(tmp_path / "grid.png")))
    assert Image.open(tmp_path / "grid.png").size == (2 * 66 + 2, 2 * 66 + 2)


def test_resumed_run_continues_exactly_like_an_uninterrupted_one(run, tmp_path):
    # Injected noise, augmentation, labels and the penalty's every-2-steps count all cross the resume.
    common = ["--debug", "--ckpt-every", "3", "--log-every", "2", "--sample-every", "100", "--gp-weight", "1", "--gp-every", "2"]
    completed(run(SCRIPT, *common, "--max-steps", "6", "--out", str(tmp_path / "whole")))
    completed(run(SCRIPT, *common, "--max-steps", "3", "--out", str(tmp_path / "split")))
    resumed = completed(run(SCRIPT, "--resume", "--max-steps", "6", "--out", str(tmp_path / "split")))
    assert "resumed from step 3" in resumed.stdout

    assert_resumed_like_whole(tmp_path / "whole", tmp_path / "split", LOSS_KEYS + ("gp",))


@pytest.mark.slow
def test_two_cpu_processes_train_on_two_ranks(run, tmp_path):
    """Started by torchrun itself: `accelerate launch --cpu`'s hand-over to it is test_wgangp's."""
    out = tmp_path / "ddp"
    completed(run(SCRIPT, "--debug", "--max-steps", "4", "--log-every", "2", "--out", str(out), launcher=torchrun_cpu(2),
                  env=TORCHRUN_CPU_ENV))
    records = read_metrics(out / "metrics.jsonl")
    assert [r["world_size"] for r in records] == [2, 2]
    files = {p.name for p in (out / "checkpoints" / "step_000004").iterdir()}
    assert {"train_state_0.pt", "train_state_1.pt", "random_states_1.pkl"} <= files


def config(*argv: str) -> LightweightGANConfig:
    return load_config(LightweightGANConfig, list(argv), "test")


def test_defaults_are_the_papers_and_debug_is_a_tiny_lightweight_pair(tmp_path):
    c = config("--out", str(tmp_path / "r"))
    assert (c.model, c.lr, c.betas, c.critic_steps, c.gp_weight, c.recon_loss) == ("lightweight", 2e-4, (0.5, 0.999), 1, 0.0, "mse")
    d = config("--debug", "--out", str(tmp_path / "r"))
    assert (d.data, d.model, d.resolution, d.max_steps, d.attn_resolutions) == ("synthetic", "lightweight", 64, 40, (16,))


def test_fixed_diffaugment_stays_the_default_inside_the_objective_and_ada_or_none_take_it_out(tmp_path):
    for mode, policy, wrapped in (("fixed", ("color", "translation", "cutout"), False), ("none", (), False), ("ada", (), True)):
        c = config("--augment", mode, "--out", str(tmp_path / "r"))
        objective = augmented(make_objective(c, None, torch.Generator()), c.augment_options(), None, lambda t: t)[0]
        assert isinstance(objective, Augmented) == wrapped, mode
        inner = objective.objective if wrapped else objective
        assert inner.augment.policy == policy, mode
    assert config("--out", str(tmp_path / "r")).augment == "fixed"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--diffaug-policy", "colour"], "--diffaug-policy 'colour': unknown DiffAugment policy 'colour'"),
        (["--diffaug-probability", "1.5"], r"--diffaug-probability 1.5: must be in \[0, 1\]"),
        (["--gp-every", "0"], "--gp-every 0: must be at least 1"),
        (["--resolution", "64", "--attn-resolutions", "32"], "attention at 32 px is not possible at resolution 64; choose from 8, 16"),
        (["--data", "toy:8gaussians"], "is 2-D points, which this trainer's models do not take"),
        (["--augment", "ada", "--diffaug-policy", "color"], "--augment ada: --diffaug-policy and --diffaug-probability are --augment fixed's"),
    ],
)
def test_bad_values_are_refused_naming_the_flag_and_the_fix(tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message):
        config(*argv, "--out", str(tmp_path / "r"))


def test_lpips_without_weights_stops_before_anything_is_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(LightweightGANConfig, make_objective, "test", ["--debug", "--recon-loss", "lpips", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--recon-loss lpips needs torchvision's VGG16 weights" in lines[0]
    assert "--recon-loss mse" in lines[0] and not out.exists()


def test_resume_refuses_other_attention_resolutions(lightweight_run):
    with pytest.raises(ConfigError, match=r"--attn-resolutions \[8\] differs from the run"):
        config("--resume", "--out", str(lightweight_run), "--attn-resolutions", "8")
