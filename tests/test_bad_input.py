"""Bad input of every kind stops a trainer with one `error:` line, exit code 2, and nothing written.

One table: each flag's invalid values, contradictory flags, an --out that cannot be written, a
hand-damaged config.json, what else a resume reads (every checkpoint damaged, a garbled metrics.jsonl,
a run.lock that is no file), a run of the other trainer, and the environment variables the toolkit
and its libraries read set to junk. Every case runs the trainer's `main` in-process and checks the
same four things: the exit code, the one line, the words that name the input and the fix, and --out
exactly as it was, every path's mode and every file's hash (or still missing). The runs a resume is
refused for keep the run.lock and exit_status.json a run leaves. argparse's own errors (an unknown
flag, a value that is not a number, a choice not offered) exit through SystemExit(2), with the same
one-line format.
"""
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from train.lightweight_gan import LightweightGANConfig
from train.lightweight_gan import make_objective as lightweight_objective
from train.report.tracking import SECRET_NAMES, resolve_wandb_mode
from train.run.config import load_config, save_config
from train.run.environment import check_environment
from train.run.lock import LOCK_FILE
from train.run.outcome import RunEnd, RunStatus, write_exit_status
from train.run.runner import main
from train.wgangp import WGANGPConfig
from train.wgangp import make_objective as wgangp_objective

WGANGP = (WGANGPConfig, wgangp_objective)
LIGHTWEIGHT = (LightweightGANConfig, lightweight_objective)
DEBUG = ["--debug"]
# Variables of the families the toolkit checks, cleared for every case so the caller's shell counts for nothing.
ENV_PREFIXES = ("WANDB_", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "ACCELERATE_", "FACEGAN_")


# --- setups: each makes --out (or not) and returns it ----------------------------------------------


def fresh(tmp_path: Path, request) -> Path:
    return tmp_path / "run"


def a_file(tmp_path: Path, request) -> Path:
    (tmp_path / "run").write_text("mine")
    return tmp_path / "run"


def under_a_file(tmp_path: Path, request) -> Path:
    (tmp_path / "notes").write_text("mine")
    return tmp_path / "notes" / "run"


def read_only(tmp_path: Path, request) -> Path:
    """A read-only mount: permission bits stop no one when the tests run as root."""
    mount = tmp_path / "ro"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(mount)], check=False, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"a read-only mount needs mount(8) to be permitted here: {result.stderr.strip()}")
    request.addfinalizer(lambda: subprocess.run(["umount", str(mount)], check=True))
    return mount


def in_read_only(tmp_path: Path, request) -> Path:
    return read_only(tmp_path, request) / "run"


def made_by(config_cls, *argv: str, edit: Callable[[str], str] = lambda text: text) -> Callable[[Path, object], Path]:
    """A run with a checkpoint folder (empty), made by `config_cls` with `argv`, and the run.lock and
    exit_status.json a run leaves; `edit` then changes its config.json's text."""

    def setup(tmp_path: Path, request) -> Path:
        out = tmp_path / "run"
        save_config(load_config(config_cls, [*argv, "--out", str(out)], "test"), out)
        (out / "checkpoints" / "step_000020").mkdir(parents=True)
        (out / "config.json").write_text(edit((out / "config.json").read_text()))
        leave_what_a_run_leaves(out)
        return out

    return setup


def leave_what_a_run_leaves(out: Path) -> None:
    """The released lock and the ending of a run that stopped at step 20; a failed start keeps both."""
    (out / LOCK_FILE).write_text('{"host": "node7", "pid": 4242, "started": 1700000000.0}')
    write_exit_status(out, RunEnd(RunStatus.STOPPED, 20, "SIGTERM"))


def finished_run(edit: Callable[[Path], None]) -> Callable[[Path, object], Path]:
    """A copy of the session's finished `--debug` run (checkpoints at 20 and 40), changed by `edit`."""

    def setup(tmp_path: Path, request) -> Path:
        out = tmp_path / "run"
        shutil.copytree(request.getfixturevalue("wgangp_run"), out)
        edit(out)
        return out

    return setup


def every_checkpoint_damaged(out: Path) -> None:
    (out / "checkpoints" / "step_000020" / "ema.safetensors").unlink()
    model = out / "checkpoints" / "step_000040" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])


def garbled_metrics_line(out: Path) -> None:
    """Line 3 of 8 cut short and run into the next, as a hand edit or a bad copy leaves it."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[2:4] = [lines[2][:20] + lines[3]]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def with_lock_path(make: Callable[[Path], None], setup: Callable[[Path, object], Path]) -> Callable[[Path, object], Path]:
    """`setup`'s --out with run.lock replaced by what `make` puts there (a folder, a FIFO)."""

    def made(tmp_path: Path, request) -> Path:
        out = setup(tmp_path, request)
        out.mkdir(exist_ok=True)
        (out / LOCK_FILE).unlink(missing_ok=True)
        make(out / LOCK_FILE)
        return out

    return made


def unreadable_images_and_a_run_without_checkpoint(tmp_path: Path, request) -> Path:
    """Found unreadable only once the lock is taken (the first batch): the start is undone then."""
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "images" / name).write_bytes(b"not an image")
    out = tmp_path / "run"
    out.mkdir()
    leave_what_a_run_leaves(out)
    return out


def config_value(name: str, value) -> Callable[[str], str]:
    return lambda text: json.dumps({**json.loads(text), name: value}, indent=2)


def replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new)

    return edit


def without_trainer(text: str) -> str:  # a run saved before config.json named its trainer
    saved = json.loads(text)
    del saved["trainer"]
    return json.dumps(saved)


def pid_dir_file(tmp_path: Path, request) -> Path:
    (tmp_path / "pids").write_text("")
    return tmp_path / "run"


@dataclass
class Case:
    description: str
    argv: list[str]
    fragment: str  # in the error line; {out} and {tmp} stand for the case's --out and tmp_path
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path, object], Path] = fresh
    trainer: tuple = WGANGP
    argparse: bool = False  # answered by argparse: SystemExit(2)


CASES = [
    # Each flag below its minimum, or outside its range.
    *[
        Case(f"--{flag} {value}", [*DEBUG, f"--{flag}", value], f"--{flag} {value}: must be at least {minimum}")
        for flag, value, minimum in [
            ("batch-size", "0", 1), ("grad-accum", "0", 1), ("critic-steps", "0", 1), ("max-steps", "0", 1),
            ("log-every", "0", 1), ("sample-every", "0", 1), ("ckpt-every", "0", 1), ("keep-checkpoints", "0", 1),
            ("latent-dim", "0", 1), ("fid-samples", "0", 1), ("nonfinite-patience", "0", 1),
            ("shuffle-buffer", "0", 1), ("channel-base", "0", 1), ("channel-max", "0", 1), ("mlp-hidden", "0", 1),
            ("collapse-patience", "0", 1), ("collapse-flat-window", "0", 1), ("num-samples", "1", 2),
        ]
    ],
    *[
        Case(f"--{flag} -1", [*DEBUG, f"--{flag}", "-1"], f"--{flag} -1: must be 0 or more")
        for flag in ("workers", "celeba-crop", "fid-every", "max-rollbacks", "seed")
    ],
    *[
        Case(f"--{flag} -1", [*DEBUG, f"--{flag}", "-1"], f"--{flag} -1.0: must be 0 or more")
        for flag in ("gp-weight", "collapse-loss-floor", "collapse-flat-tolerance")
    ],
    Case("--resolution 96", [*DEBUG, "--resolution", "96"], "--resolution: resolution 96 is not supported"),
    Case("--resolution 2048", [*DEBUG, "--resolution", "2048"], "choose one of 32, 64, 128, 256, 512, 1024"),
    Case("--alpha-background 256", [*DEBUG, "--alpha-background", "0", "0", "256"], "give three values in 0..255"),
    Case("--lr 0", [*DEBUG, "--lr", "0"], "--lr 0.0: must be above 0"),
    Case("--lr nan", [*DEBUG, "--lr", "nan"], "--lr nan: must be a finite number"),
    Case("--gp-weight inf", [*DEBUG, "--gp-weight", "inf"], "--gp-weight inf: must be a finite number"),
    Case("--lr 1e39", [*DEBUG, "--lr", "1e39"], "--lr 1e+39: must fit in float32 (at most 3.4e+38 in size), the precision training computes in"),
    Case("--gp-weight 1e-50", [*DEBUG, "--gp-weight", "1e-50"], "--gp-weight 1e-50: must fit in float32 (1e-50 rounds to 0 there"),
    Case("--betas 1 0.9", [*DEBUG, "--betas", "1", "0.9"], "--betas 1.0 0.9: each must be in [0, 1)"),
    Case("--betas -0.1 0.9", [*DEBUG, "--betas", "-0.1", "0.9"], "each must be in [0, 1)"),
    Case("--g-betas 1 0.9", [*DEBUG, "--g-betas", "1", "0.9"], "--g-betas 1.0 0.9: each must be in [0, 1)"),
    Case("--d-betas 0.5 1", [*DEBUG, "--d-betas", "0.5", "1"], "--d-betas 0.5 1.0: each must be in [0, 1)"),
    Case("--pack 3", [*DEBUG, "--pack", "3"], "--pack 3: --batch-size 8 must be a multiple of it"),
    Case("--profile 100", [*DEBUG, "--profile", "100"], "--profile 100: the profile ends at step"),
    Case("--instance-noise -1", [*DEBUG, "--instance-noise", "-1"], "--instance-noise -1.0 /"),
    Case("--instance-noise-decay -1", [*DEBUG, "--instance-noise-decay", "-1"], "--instance-noise-decay -1.0 /"),
    Case("--instance-noise-steps 0", [*DEBUG, "--instance-noise-steps", "0"], "--instance-noise-steps 0: A and k must be 0 or more"),
    Case("--gradient-clipping 1 without --deepspeed", [*DEBUG, "--gradient-clipping", "1"],
         "--gradient-clipping 1.0: a value of 0 or more, and only with --deepspeed"),
    Case("--ema-decay 1", [*DEBUG, "--ema-decay", "1"], "--ema-decay 1.0: must be in [0, 1)"),
    Case("--ada-target 1.5", [*DEBUG, "--ada-target", "1.5"], "--ada-target 1.5: must be in [0, 1]"),
    Case("--ada-kimg 0", [*DEBUG, "--ada-kimg", "0"], "--ada-kimg 0.0: must be above 0"),
    Case("--collapse-diversity-drop 1", [*DEBUG, "--collapse-diversity-drop", "1"], "--collapse-diversity-drop 1.0: must be in [0, 1)"),
    Case("--time-limit soon", [*DEBUG, "--time-limit", "soon"], "--time-limit soon: 'soon' is not a duration; give a duration"),
    Case("--time-limit 0", [*DEBUG, "--time-limit", "0"], "--time-limit 0: it is no time at all"),
    Case("--data ''", [*DEBUG, "--data", ""], "--data '': empty"),
    Case("--data a missing folder", [*DEBUG, "--data", "{tmp}/missing"], "no such folder"),
    Case("--data toy:9gaussians", [*DEBUG, "--data", "toy:9gaussians"], "unknown toy dataset"),
    *[Case(f"--{flag} ''", [*DEBUG, f"--{flag}", ""], f"--{flag} '': empty; give a value")
      for flag in ("split", "image-column", "wandb-project", "wandb-entity", "wandb-name", "fid-weights", "fid-cache")],
    Case("--out ''", [*DEBUG, "--out", ""], "--out '': empty"),
    Case("--wandb-project a/b", [*DEBUG, "--wandb-project", "a/b"], "--wandb-project 'a/b': W&B project names have"),
    Case("--wandb-tags ''", [*DEBUG, "--wandb-tags", "ok", ""], "--wandb-tags '': W&B tags have 1 to 64 characters"),
    # argparse: a choice not offered, a value of the wrong type or count, a flag that does not exist.
    *[
        Case(f"--{flag} {value}", [*DEBUG, f"--{flag}", value], f"error: argument --{flag}: invalid choice: '{value}'", argparse=True)
        for flag, value in [("model", "biggan"), ("critic-norm", "batch"), ("resume", "maybe"),
                            ("mixed-precision", "fp32"), ("wandb-mode", "dryrun")]
    ],
    Case("--batch-size abc", [*DEBUG, "--batch-size", "abc"], "argument --batch-size: invalid int value: 'abc'", argparse=True),
    Case("--lr fast", [*DEBUG, "--lr", "fast"], "argument --lr: invalid float value: 'fast'", argparse=True),
    Case("--betas 0.5", [*DEBUG, "--betas", "0.5"], "argument --betas: expected 2 arguments", argparse=True),
    Case("an unknown flag", [*DEBUG, "--batchsize", "8"], "unrecognized arguments: --batchsize 8", argparse=True),
    # The lightweight GAN's own flags.
    Case("--diffaug-policy blur", ["--debug", "--diffaug-policy", "blur"], "--diffaug-policy 'blur'", trainer=LIGHTWEIGHT),
    Case("--diffaug-probability 1.5", ["--debug", "--diffaug-probability", "1.5"], "must be in [0, 1]", trainer=LIGHTWEIGHT),
    Case("--recon-weight -1", ["--debug", "--recon-weight", "-1"], "--recon-weight -1.0: must be 0 or more", trainer=LIGHTWEIGHT),
    Case("--gp-every 0", ["--debug", "--gp-every", "0"], "--gp-every 0: must be at least 1", trainer=LIGHTWEIGHT),
    Case("--attn-resolutions 3", ["--debug", "--attn-resolutions", "3"], "attention at 3 px is not possible", trainer=LIGHTWEIGHT),
    Case("--recon-loss l1", ["--debug", "--recon-loss", "l1"], "argument --recon-loss: invalid choice: 'l1'", trainer=LIGHTWEIGHT,
         argparse=True),
    # Contradictory flags.
    Case("toy data with a conv model", ["--data", "toy:8gaussians", "--model", "dcgan"], "--data toy:8gaussians is 2-D points; use --model mlp"),
    Case("the MLP on images", [*DEBUG, "--model", "mlp"], "--model mlp is for toy data; for images use --model dcgan or resnet"),
    Case("FID on toy data", ["--data", "toy:8gaussians", "--fid-every", "10"], "FID compares images"),
    Case("FID on 2 samples", [*DEBUG, "--fid-every", "10", "--fid-samples", "2"], "--fid-samples 2: FID and KID need at least 4"),
    Case("the lightweight GAN on toy data", ["--debug", "--data", "toy:8gaussians"], "is 2-D points, which this trainer's models do not take",
         trainer=LIGHTWEIGHT),
    Case("--resume --debug of a full run", ["--resume", "--debug", "--out", "{out}"], "--debug: the run in {out} was not made with --debug",
         setup=made_by(WGANGPConfig, "--data", "synthetic", "--model", "dcgan")),
    Case("--resume with another --resolution", ["--resume", "--resolution", "128", "--out", "{out}"], "--resolution 128 differs from the run",
         setup=made_by(WGANGPConfig, *DEBUG)),
    # --out.
    Case("--out a file", [*DEBUG], "--out {out} is a file; point --out at a folder", setup=a_file),
    Case("--out inside a file", [*DEBUG], "--out {out}: {tmp}/notes is a file", setup=under_a_file),
    Case("--out read-only", [*DEBUG], "--out {out}: not writable ({out} is on a read-only file system); choose another --out", setup=read_only),
    Case("--out in a read-only folder", [*DEBUG], "not writable ({tmp}/ro is on a read-only file system)", setup=in_read_only),
    Case("--out that holds a run", [*DEBUG], "--out {out} already holds a run; add --resume", setup=made_by(WGANGPConfig, *DEBUG)),
    Case("--resume of nothing", ["--resume"], "--resume: {out} holds no run (no config.json)"),
    # A hand-edited config.json, on --resume.
    Case("config.json not JSON", ["--resume"], ", column 19 (Expecting property name enclosed in double quotes); repair that line",
         setup=made_by(WGANGPConfig, *DEBUG, edit=replace('"batch_size": 8,', '"batch_size": 8,,'))),
    Case("config.json a list", ["--resume"], "config.json holds no {{\"setting\": value, ...}} object",
         setup=made_by(WGANGPConfig, *DEBUG, edit=lambda text: "[1, 2]")),
    Case("config.json: a word for a number", ["--resume"], "config.json: \"batch_size\": \"sixty-four\" is not a whole number; fix that line",
         setup=made_by(WGANGPConfig, *DEBUG, edit=replace('"batch_size": 8', '"batch_size": "sixty-four"'))),
    Case("config.json: a list for a number", ["--resume"], "\"latent_dim\": [64] is not a whole number",
         setup=made_by(WGANGPConfig, *DEBUG, edit=replace('"latent_dim": 64', '"latent_dim": [64]'))),
    Case("config.json: a wrong-length list", ["--resume"], "\"betas\": [0.0] is not a list of 2 finite numbers",
         setup=made_by(WGANGPConfig, *DEBUG, edit=lambda text: json.dumps({**json.loads(text), "betas": [0.0]}))),
    Case("config.json: an unknown setting", ["--resume"], "config.json: 'batchsize' is no setting of train/wgangp.py; delete that line",
         setup=made_by(WGANGPConfig, *DEBUG, edit=lambda text: json.dumps({**json.loads(text), "batchsize": 8}))),
    Case("config.json: beyond float32", ["--resume"], "config.json: \"lr\": 1e+39: must fit in float32",
         setup=made_by(WGANGPConfig, *DEBUG, edit=replace('"lr": 0.0001', '"lr": 1e39'))),
    Case("config.json: NaN", ["--resume"], "config.json: \"gp_weight\": NaN is not a finite number",
         setup=made_by(WGANGPConfig, *DEBUG, edit=replace('"gp_weight": 10.0', '"gp_weight": NaN'))),
    Case("config.json: a choice not offered", ["--resume"], "config.json: \"critic_norm\": \"batch\" is not one of layer, instance, none",
         setup=made_by(WGANGPConfig, *DEBUG, edit=config_value("critic_norm", "batch"))),
    Case("config.json: a seed beyond 64 bits", ["--resume"], f"config.json: \"seed\": {2**64}: must be at most {2**64 - 1}; fix that line",
         setup=made_by(WGANGPConfig, *DEBUG, edit=config_value("seed", 2**64))),
    Case("config.json: a value below the flag's minimum", ["--resume"], "config.json: \"batch_size\": 0: must be at least 1; fix that line",
         setup=made_by(WGANGPConfig, *DEBUG, edit=config_value("batch_size", 0))),
    Case("config.json: a string left open", ["--resume"],
         ", column 11 (Unterminated string starting there); repair that line",
         setup=made_by(WGANGPConfig, *DEBUG, edit=lambda text: text.rstrip()[:-1] + ',\n  "note": "unfinished')),
    # What a resume reads besides config.json: the checkpoints, metrics.jsonl, the lock.
    Case("every checkpoint damaged", ["--resume"],
         "--resume: no whole checkpoint in {out}/checkpoints (step_000040: model.safetensors cannot be read",
         setup=finished_run(every_checkpoint_damaged)),
    Case("an empty checkpoint folder the only one", ["--resume"],
         "--resume: no whole checkpoint in {out}/checkpoints (step_000020: model.safetensors is missing)",
         setup=made_by(WGANGPConfig, *DEBUG)),
    Case("metrics.jsonl with a garbled line", ["--resume", "--max-steps", "60"],
         "--resume: {out}/metrics.jsonl line 3 is not a JSON record (Expecting", setup=finished_run(garbled_metrics_line)),
    Case("--data a folder of unreadable images, over a start that died early", [*DEBUG, "--data", "{tmp}/images"],
         "--data {tmp}/images: not one readable image in 3 passes", setup=unreadable_images_and_a_run_without_checkpoint),
    Case("run.lock a folder, on a start", [*DEBUG], "--out {out}: {out}/run.lock is a folder, where the run keeps its lock file;",
         setup=with_lock_path(os.mkdir, fresh)),
    Case("run.lock a FIFO, on a resume", ["--resume"], "--out {out}: {out}/run.lock is a named pipe (FIFO), where the run keeps",
         setup=with_lock_path(os.mkfifo, made_by(WGANGPConfig, *DEBUG))),
    # A run of the other trainer.
    Case("a lightweight run resumed by wgangp", ["--resume"], "the run in {out} was made by train/lightweight_gan.py; resume it with that script",
         setup=made_by(LightweightGANConfig, *DEBUG)),
    Case("a wgangp run resumed by lightweight", ["--resume"], "the run in {out} was made by train/wgangp.py; resume it with that script",
         setup=made_by(WGANGPConfig, *DEBUG), trainer=LIGHTWEIGHT),
    Case("an older lightweight run", ["--resume"], "was made by another trainer (its model, 'lightweight', is not one of train/wgangp.py's",
         setup=made_by(LightweightGANConfig, *DEBUG, edit=without_trainer)),
    Case("an older wgangp run", ["--resume"], "was made by another trainer (its model, 'dcgan'", setup=made_by(WGANGPConfig, *DEBUG, edit=without_trainer),
         trainer=LIGHTWEIGHT),
    # Environment variables (an empty one counts as unset: see test_empty_variables_count_as_unset).
    Case("WANDB_MODE=maybe", [*DEBUG, "--wandb-mode", "offline"], "WANDB_MODE=maybe: not a W&B mode; unset it or set it to online, offline or disabled",
         env={"WANDB_MODE": "maybe"}),
    Case("WANDB_MODE=OFFLINE", [*DEBUG, "--wandb-mode", "offline"], "WANDB_MODE=OFFLINE: not a W&B mode", env={"WANDB_MODE": "OFFLINE"}),
    Case("WANDB_API_KEY too short, online", [*DEBUG, "--wandb-mode", "online"],
         "WANDB_API_KEY is set but malformed (API key must have 40+ characters, has 9); unset it and run `wandb login`",
         env={"WANDB_API_KEY": "hunter2go"}),
    Case("WANDB_API_KEY with a space", [*DEBUG, "--wandb-mode", "online"], "WANDB_API_KEY is set but malformed",
         env={"WANDB_API_KEY": "0123456789abcdef0123 456789abcdef0123456789"}),
    Case("WANDB_API_KEY padded, offline", [*DEBUG, "--wandb-mode", "offline"], "malformed (it starts or ends with whitespace)",
         env={"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567\n"}),
    # The real wandb's own lookup of a key, in a home without ~/.netrc (--debug's preset turns W&B off).
    *[Case(f"{given} without a W&B key", ["--data", "synthetic", "--fid-every", "0", *argv], f"{given}: no W&B API key found (no WANDB_API_KEY, and no `wandb login`"
           " in ~/.netrc); run `wandb login`, set WANDB_API_KEY to the key from https://wandb.ai/authorize, or log offline"
           " with --wandb-mode offline", env={"HOME": "{tmp}", "NETRC": "{tmp}/.netrc", **env})
      for given, argv, env in [("WANDB_MODE=online", [], {"WANDB_MODE": "online"}),
                               ("--wandb-mode online", ["--wandb-mode", "online"], {})]],
    Case("HF_HUB_OFFLINE=maybe", [*DEBUG], "HF_HUB_OFFLINE=maybe: not a yes/no value; unset it or set it to 1, 0,", env={"HF_HUB_OFFLINE": "maybe"}),
    Case("HF_DATASETS_OFFLINE=offline", [*DEBUG], "HF_DATASETS_OFFLINE=offline: not a yes/no value", env={"HF_DATASETS_OFFLINE": "offline"}),
    Case("ACCELERATE_MIXED_PRECISION=fp32", [*DEBUG], "ACCELERATE_MIXED_PRECISION=fp32: not a precision this toolkit trains in; unset it or set it"
         " to no, fp16 or bf16, or pass --mixed-precision", env={"ACCELERATE_MIXED_PRECISION": "fp32"}),
    Case("ACCELERATE_MIXED_PRECISION=fp8", [*DEBUG], "ACCELERATE_MIXED_PRECISION=fp8: not a precision", env={"ACCELERATE_MIXED_PRECISION": "fp8"}),
    Case("ACCELERATE_USE_CPU=maybe", [*DEBUG], "ACCELERATE_USE_CPU=maybe: not a yes/no value accelerate reads", env={"ACCELERATE_USE_CPU": "maybe"}),
    Case("ACCELERATE_DEBUG_MODE=2", [*DEBUG], "ACCELERATE_DEBUG_MODE=2: not a yes/no value", env={"ACCELERATE_DEBUG_MODE": "2"}),
    Case("ACCELERATE_USE_FSDP=1", [*DEBUG], "ACCELERATE_USE_FSDP=1: accelerate reads only true as on; unset it or set it to true or false",
         env={"ACCELERATE_USE_FSDP": "1"}),
    Case("ACCELERATE_GRADIENT_ACCUMULATION_STEPS=4", [*DEBUG], "this toolkit accumulates with --grad-accum",
         env={"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}),
    Case("ACCELERATE_GRADIENT_ACCUMULATION_STEPS=many", [*DEBUG], "ACCELERATE_GRADIENT_ACCUMULATION_STEPS=many:",
         env={"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "many"}),
    Case("ACCELERATE_DYNAMO_BACKEND=inductor", [*DEBUG], "torch.compile cannot take the gradient penalty's double backward",
         env={"ACCELERATE_DYNAMO_BACKEND": "inductor"}),
    Case("ACCELERATE_DYNAMO_USE_FULLGRAPH=sure", [*DEBUG], "ACCELERATE_DYNAMO_USE_FULLGRAPH=sure: not a yes/no value",
         env={"ACCELERATE_DYNAMO_USE_FULLGRAPH": "sure"}),
    Case("ACCELERATE_TORCH_DEVICE=gpu0", [*DEBUG], "ACCELERATE_TORCH_DEVICE=gpu0: not a torch device", env={"ACCELERATE_TORCH_DEVICE": "gpu0"}),
    Case("FACEGAN_PID_DIR a file", [*DEBUG], "FACEGAN_PID_DIR={tmp}/pids: a file", env={"FACEGAN_PID_DIR": "{tmp}/pids"}, setup=pid_dir_file),
    Case("FACEGAN_FAILPOINTS naming no failpoint", [*DEBUG], "FACEGAN_FAILPOINTS='nonfinite loss=5': 'nonfinite loss' is no failpoint",
         env={"FACEGAN_FAILPOINTS": "nonfinite loss=5"}),
    Case("FACEGAN_FAILPOINTS with a malformed value", [*DEBUG], "nonfinite_loss='five': nonfinite_loss takes FIRST[:COUNT]",
         env={"FACEGAN_FAILPOINTS": "nonfinite_loss=five"}),
]


def snapshot(out: Path) -> dict[str, tuple[int, str | None]] | None:
    """--out and everything in it: each path's mode (type and permissions) and each file's SHA-256;
    None when --out does not exist."""
    if not out.exists():
        return None

    def entry(path: Path) -> tuple[int, str | None]:
        mode = path.lstat().st_mode
        return mode, hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(mode) else None

    return {".": entry(out), **({} if out.is_file() else {str(p.relative_to(out)): entry(p) for p in sorted(out.rglob("*"))})}


@pytest.mark.parametrize("case", CASES, ids=[case.description for case in CASES])
def test_bad_input_stops_with_one_error_line_exit_2_and_nothing_written(case, tmp_path, request, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a relative default --out would land here
    for name in [name for name in os.environ if name.startswith(ENV_PREFIXES)]:
        monkeypatch.delenv(name)
    out = case.setup(tmp_path, request)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    argv = [arg.format(out=out, tmp=tmp_path) for arg in case.argv]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    before = snapshot(out)
    capsys.readouterr()

    config_cls, make_objective = case.trainer
    if case.argparse:
        with pytest.raises(SystemExit) as exit_info:
            main(config_cls, make_objective, "test", argv)
        code = exit_info.value.code
    else:
        code = main(config_cls, make_objective, "test", argv)

    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.fragment.format(out=out, tmp=tmp_path) in lines[0]
    for name, value in case.env.items():
        if SECRET_NAMES.search(name):
            assert value.strip() not in err and value.strip()[:8] not in err
    assert snapshot(out) == before
    assert not (tmp_path / "runs").exists()


def test_empty_variables_count_as_unset(tmp_path, monkeypatch):
    environ = {"WANDB_MODE": "", "WANDB_API_KEY": "", "HF_HUB_OFFLINE": "", "ACCELERATE_MIXED_PRECISION": "",
               "ACCELERATE_USE_CPU": "", "FACEGAN_PID_DIR": "", "FACEGAN_FAILPOINTS": "", "PATH": "", "OTHER": ""}
    check_environment(environ)
    assert environ == {"PATH": "", "OTHER": ""}  # only the families the toolkit and its libraries read
    assert resolve_wandb_mode(None, {"WANDB_MODE": "", "WANDB_API_KEY": "k" * 40}) == ("online", None)
    assert resolve_wandb_mode(None, {"WANDB_MODE": "dryrun"}) == ("offline", None)

    # In a trainer: wandb itself never sees the empty variable (it would refuse '' seconds into the run).
    monkeypatch.setenv("WANDB_MODE", "")
    config = load_config(WGANGPConfig, ["--debug", "--wandb-mode", "offline", "--out", str(tmp_path / "run")], "test")
    assert config.wandb_mode == "offline" and "WANDB_MODE" not in os.environ


def test_the_table_covers_every_numeric_flag():
    names = {f.name for cls in (WGANGPConfig, LightweightGANConfig) for f in cls.__dataclass_fields__.values()
             if f.type in (int, float) or str(f.type).startswith("tuple[int") or str(f.type).startswith("tuple[float")}
    covered = {re.sub(r"^--", "", case.description.split()[0]).replace("-", "_") for case in CASES}
    assert names <= covered, f"no row for {sorted(names - covered)}"
