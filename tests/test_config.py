"""train/run/config.py: presets, precedence, and refusing bad input before any compute."""
import dataclasses
import json
from dataclasses import dataclass

import pytest

from models import DCGAN_SWITCHES, DCGANOptions
from train.dcgan import DCGANConfig
from train.lightweight_gan import LightweightGANConfig
from train.run.config import ConfigError, TrainConfig, flag, load_config, resuming, save_config
from train.run.finished import FinishedRun
from train.run.flags import build_parser
from train.run.networks import build_networks
from train.run.runner import main
from train.wgangp import WGANGPConfig, make_objective


def config(*argv: str) -> WGANGPConfig:
    return load_config(WGANGPConfig, list(argv), "test")


def test_debug_preset_is_a_tiny_dcgan_on_synthetic_images(tmp_path):
    c = config("--debug", "--out", str(tmp_path / "r"))
    assert (c.data, c.model, c.resolution, c.max_steps) == ("synthetic", "dcgan", 32, 40)
    assert c.gp_weight == 10.0 and c.betas == (0.0, 0.9)


def test_toy_data_brings_the_toy_recipe_and_debug_keeps_it_an_mlp(tmp_path):
    for extra in ([], ["--debug"]):
        c = config("--data", "toy:8gaussians", "--out", str(tmp_path / "r"), *extra)
        assert (c.model, c.latent_dim, c.batch_size, c.gp_weight, c.betas) == ("mlp", 2, 256, 0.1, (0.5, 0.9))


def test_flags_given_win_over_presets(tmp_path):
    c = config("--debug", "--batch-size", "3", "--gp-weight", "5", "--betas", "0.1", "0.8", "--out", str(tmp_path / "r"))
    assert (c.batch_size, c.gp_weight, c.betas, c.max_steps) == (3, 5.0, (0.1, 0.8), 40)


def test_resume_takes_the_saved_config_and_new_flags(tmp_path):
    out = tmp_path / "r"
    saved = config("--debug", "--batch-size", "3", "--out", str(out))
    save_config(saved, out)
    (out / "checkpoints" / "step_000020").mkdir(parents=True)
    c = config("--resume", "--out", str(out), "--max-steps", "80")
    assert (c.batch_size, c.model, c.max_steps, c.resume) == (3, "dcgan", 80, "yes")
    with pytest.raises(ConfigError, match=r"--resolution 128 differs from the run in .* \(32\); drop the flag to resume"):
        config("--resume", "--out", str(out), "--resolution", "128")


def test_resume_auto_continues_a_run_with_a_checkpoint_and_starts_over_one_without(tmp_path):
    out = tmp_path / "r"
    save_config(config("--debug", "--batch-size", "3", "--time-limit", "1h", "--out", str(out)), out)
    fresh = config("--debug", "--resume", "auto", "--out", str(out))  # an interrupted start: nothing to lose
    assert (fresh.batch_size, resuming(fresh)) == (8, False)
    (out / "checkpoints" / "step_000020").mkdir(parents=True)
    again = config("--resume", "auto", "--out", str(out))
    assert (again.batch_size, resuming(again)) == (3, True)
    assert again.time_limit is None  # how the last session ran is not the run's: not taken over
    with pytest.raises(ConfigError, match="already holds a run; add --resume"):
        config("--debug", "--out", str(out))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--resolution", "100"], "resolution 100 is not supported by 'resnet'; choose one of 32, 64, 128, 256, 512, 1024"),
        (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
        (["--data", "toy:8gaussians", "--model", "dcgan"], "--model dcgan: --data toy:8gaussians is 2-D points; use --model mlp"),
        (["--model", "mlp"], "--model mlp is for toy data; for images use --model dcgan or resnet"),
        (["--data", "toy:9gaussians"], "unknown toy dataset"),
        (["--ema-decay", "1.0"], r"--ema-decay 1.0: must be in \[0, 1\)"),
        (["--data", "toy:8gaussians", "--model", "mlp", "--augment", "ada"], "--augment ada: the augmentations transform images"),
        (["--augment", "ada", "--ada-target", "1.5"], r"--ada-target 1.5: must be in \[0, 1\]"),
    ],
)
def test_bad_values_are_refused_naming_the_flag_and_the_fix(tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message):
        config(*argv, "--out", str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_a_missing_or_empty_data_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        config("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="the folder holds no images"):
        config("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"))


def test_resume_without_a_run_or_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="holds no run \\(no config.json\\); start without --resume"):
        config("--resume", "--out", str(tmp_path / "r"))
    save_config(config("--debug", "--out", str(tmp_path / "r")), tmp_path / "r")
    with pytest.raises(ConfigError, match="--resume: no checkpoint in .*; start without --resume"):
        config("--resume", "--out", str(tmp_path / "r"))


def test_an_existing_run_is_never_started_over(tmp_path):
    out = tmp_path / "r"
    (out / "checkpoints" / "step_000010").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds a run; add --resume to continue it, or choose another --out"):
        config("--debug", "--out", str(out))


def test_a_folder_without_a_checkpoint_holds_no_run_and_a_new_one_starts_there(tmp_path):
    out = tmp_path / "r"
    save_config(config("--debug", "--out", str(out)), out)  # a start that died before its first checkpoint
    assert config("--debug", "--out", str(out)).out == str(out)
    with pytest.raises(ConfigError, match="--resume: no checkpoint in .*; start without --resume"):
        config("--resume", "--out", str(out))


def test_an_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "r").write_text("mine")
    with pytest.raises(ConfigError, match="--out .* is a file; point --out at a folder"):
        config("--debug", "--out", str(tmp_path / "r"))


def test_unknown_model_is_an_argparse_error_listing_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        config("--model", "biggan", "--out", str(tmp_path / "r"))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.replace("'", "")
    assert "--model: invalid choice: biggan (choose from dcgan, resnet, mlp)" in error


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--data", "nowhere/images"], "--data nowhere/images"),
        (["--resolution", "96"], "--resolution: resolution 96"),
        (["--resolution", "2048"], "--resolution: resolution 2048"),
        (["--resume"], "--resume"),
    ],
)
def test_the_cli_exits_non_zero_with_one_line_and_leaves_out_untouched(tmp_path, capsys, argv, flag):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(WGANGPConfig, make_objective, "test", [*argv, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_config_json_holds_every_field(tmp_path):
    c = config("--debug", "--out", str(tmp_path / "r"))
    save_config(c, tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["gp_weight"] == 10.0 and saved["critic_steps"] == 5 and saved["betas"] == [0.0, 0.9]


@dataclass
class WithWarmup(WGANGPConfig):
    warmup: float = flag(0.5, "a fraction of the run", min=0.0, max=1.0)


def resumed_with(tmp_path, config_cls, **edits):
    """A run with a checkpoint whose config.json was then hand-edited to hold `edits`."""
    out = tmp_path / "r"
    save_config(load_config(config_cls, ["--debug", "--out", str(out)], "test"), out)
    (out / "checkpoints" / "step_000020").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({**json.loads((out / "config.json").read_text()), **edits}))
    return out


@pytest.mark.parametrize(
    "config_cls, name, flag_value, json_value, refusal",
    [
        (WithWarmup, "warmup", "2", 2.0, r"must be in \[0, 1\]"),
        (WGANGPConfig, "batch_size", "0", 0, "must be at least 1"),
        (WGANGPConfig, "lr", "0", 0.0, "must be above 0"),
        (WGANGPConfig, "seed", str(2**64), 2**64, f"must be at most {2**64 - 1}"),
        (WGANGPConfig, "wandb_project", "", "", "empty; give a value"),
    ],
)
def test_a_declared_limit_refuses_the_flag_and_the_config_json_value_alike(tmp_path, config_cls, name, flag_value, json_value, refusal):
    with pytest.raises(ConfigError, match=f"^--{name.replace('_', '-')} .*: {refusal}"):
        load_config(config_cls, ["--debug", f"--{name.replace('_', '-')}", flag_value, "--out", str(tmp_path / "flag")], "test")
    out = resumed_with(tmp_path, config_cls, **{name: json_value})
    with pytest.raises(ConfigError, match=f'^--resume: .*config.json: "{name}": .*: {refusal}.*; fix that line'):
        load_config(config_cls, ["--resume", "--out", str(out)], "test")


def test_a_declared_limit_is_told_in_the_help():
    help_text = " ".join(build_parser(WithWarmup, "test").format_help().split())
    assert "a fraction of the run (default: 0.5; in [0, 1])" in help_text
    assert "samples per process per forward (default: 64; at least 1)" in help_text


def test_config_json_values_outside_the_choices_are_refused_naming_the_line(tmp_path):
    out = resumed_with(tmp_path, WGANGPConfig, critic_norm="batchnorm")
    with pytest.raises(ConfigError, match='"critic_norm": "batchnorm" is not one of layer, instance, none; fix that line'):
        load_config(WGANGPConfig, ["--resume", "--out", str(out)], "test")


def test_a_run_read_back_is_its_recipes_typed_config(tmp_path):
    out = tmp_path / "r"
    save_config(load_config(LightweightGANConfig, ["--debug", "--out", str(out)], "test"), out)
    config = FinishedRun(out).config
    assert isinstance(config, LightweightGANConfig)
    assert config.attn_resolutions == (16,) and config.betas == (0.5, 0.999)  # tuples, as the flags give them


def test_every_dcgan_switch_reaches_the_model_by_its_own_name():
    changed = {"networks": "veegan", "g_norm": "none", "d_first_norm": True, "g_activation": "leaky_relu", "d_activation": "relu",
               "upsample": "k2s2", "downsample": "maxpool", "g_dropout": 0.1, "d_dropout": 0.2, "conv_bias": True,
               "dcgan_init": False}
    assert set(changed) == set(DCGAN_SWITCHES)  # a new switch needs a row here
    assert DCGANConfig(**changed).model_options().dcgan == DCGANOptions(**changed)
    assert set(DCGAN_SWITCHES) <= set(DCGANConfig.architecture_fields)  # a resumed run keeps them


def test_a_misspelt_dcgan_option_cannot_be_dropped_silently():
    with pytest.raises(TypeError, match="g_nrom"):  # was: dropped by build_networks' signature filter
        DCGANOptions(g_nrom="none")

    @dataclass
    class Misspelt(TrainConfig):  # a recipe whose flag does not carry the option's name
        g_nrom: str = flag("none", "normalisation in the generator")

        def model_options(self):
            return dataclasses.replace(
                super().model_options(), dcgan=DCGANOptions(**{name: getattr(self, name) for name in ("g_norm",)})
            )

    with pytest.raises(AttributeError, match="g_norm"):
        build_networks(Misspelt(model="dcgan"))
