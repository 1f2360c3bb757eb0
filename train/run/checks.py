"""Every check of a configuration that needs no compute, so that a bad start fails with one line
naming the flag and the fix before --out is touched: each field's declared limits
(train/run/flags.py), then the checks that relate several fields, the environment, and --out.
"""
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from models import POINT_MODELS, ModelOptionError, check_model
from train.common.writable import nearest_existing, not_writable_reason
from train.data.prepared import check_prepared
from train.data.stacked_mnist import check_resolution as check_stacked_mnist_resolution
from train.report.metrics import METRICS_FILE, MetricsDamaged, read_lines
from train.run.checkpoint import latest_checkpoint
from train.run.environment import BadEnvironment, check_environment
from train.run.flags import ConfigError, check_limits, flag_name
from train.run.profiling import profile_steps_needed
from train.run.stop import parse_duration
from train.run.zero import ZeroRefused, check_zero

if TYPE_CHECKING:
    from train.run.config import TrainConfig

# wandb's own limits (wandb_settings.Settings.validate_project, validate_run_tags), refused at wandb.init.
WANDB_PROJECT_FORBIDDEN = "/\\#?%:"
WANDB_PROJECT_MAX, WANDB_TAG_MAX = 128, 64


def check_config(config: "TrainConfig") -> None:
    """Every check that needs no compute, so a bad start fails before touching --out."""
    check_limits(config)
    check_schedules(config)
    check_wandb_names(config)
    check_deepspeed(config)
    check_data_and_model(config)
    check_decode_device(config)
    config.check_recipe()
    for name in ("time_limit", "collective_timeout"):
        check_duration(name, getattr(config, name))
    # After the flags, whose errors answer without importing wandb (for its API-key rule).
    try:
        check_environment(wandb_mode=config.wandb_mode, mixed_precision=config.mixed_precision)
    except BadEnvironment as error:
        raise ConfigError(str(error)) from None
    check_run_dir(config)


def check_duration(name: str, value: str | None) -> None:
    """A duration flag's value (None: not given) as parse_duration reads it."""
    if value is None:
        return
    try:
        parse_duration(value)
    except ValueError as error:
        raise ConfigError(
            f"{flag_name(name)} {value}: {error}; give a duration such as 11h30m, 45m, 90s, 5400 or 11:30:00"
        ) from None


def check_schedules(config: "TrainConfig") -> None:
    """Step counts and sizes that must agree with one another."""
    if config.profile and profile_steps_needed(config.profile) > config.max_steps:
        raise ConfigError(
            f"--profile {config.profile}: the profile ends at step {profile_steps_needed(config.profile)} (after a"
            f" {profile_steps_needed(0)}-step warm-up), beyond --max-steps {config.max_steps}; raise --max-steps or lower --profile"
        )
    if config.batch_size % config.pack:
        raise ConfigError(
            f"--pack {config.pack}: --batch-size {config.batch_size} must be a multiple of it (real and fake are packed apart)"
        )
    if config.instance_noise < 0 or config.instance_noise_decay < 0 or config.instance_noise_steps < 1:
        raise ConfigError(
            f"--instance-noise {config.instance_noise} / --instance-noise-decay {config.instance_noise_decay} /"
            f" --instance-noise-steps {config.instance_noise_steps}: A and k must be 0 or more, T at least 1"
        )


def check_data_and_model(config: "TrainConfig") -> None:
    """The data source, the model pair and its options, and whether they suit each other."""
    try:
        spec = config.data_options.spec
        if spec.kind == "stacked-mnist":
            check_stacked_mnist_resolution(config.resolution)
        if spec.kind == "prepared":  # the pixels were decoded once: the run's decoding flags must be those
            check_prepared(config.data_options)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        check_model(config.model_options())
    except ModelOptionError as error:
        raise ConfigError(f"{flag_name(error.option)}: {error}") from None
    models = next(f for f in dataclasses.fields(config) if f.name == "model").metadata["choices"]
    if config.model not in models:
        raise ConfigError(f"--model {config.model}: this trainer takes {', '.join(models)}")
    if spec.is_points and config.model not in POINT_MODELS:
        if not set(models) & set(POINT_MODELS):
            raise ConfigError(f"--data {config.data} is 2-D points, which this trainer's models do not take; use images")
        raise ConfigError(f"--model {config.model}: --data {config.data} is 2-D points; use --model mlp")
    if spec.is_points and config.fid_every:
        raise ConfigError(f"--fid-every {config.fid_every}: FID compares images, --data {config.data} is points; use --fid-every 0")
    if spec.is_points and config.augment != "none":
        raise ConfigError(f"--augment {config.augment}: the augmentations transform images, --data {config.data} is points; use --augment none")
    if config.fid_every and config.fid_samples < 4:
        scores = (  # what --fid-every evaluates on this data (train/run/evaluation.py)
            "the Stacked MNIST scores need at least 4 (26000 for PacGAN's tables)"
            if spec.kind == "stacked-mnist" else "FID and KID need at least 4 (10000+ for stable numbers)"
        )
        raise ConfigError(f"--fid-samples {config.fid_samples}: {scores}; raise it, or turn the evaluation off with --fid-every 0")
    if not spec.is_points and config.model in POINT_MODELS:
        image_models = " or ".join(m for m in models if m not in POINT_MODELS)
        raise ConfigError(f"--model {config.model} is for toy data; for images use --model {image_models}")


def check_decode_device(config: "TrainConfig") -> None:
    """--decode-device cuda needs a GPU to decode on, and images to decode."""
    if config.decode_device == "cpu":
        return
    if config.runs_on_cpu():
        why, other_fix = ("--cpu trains on the CPU", "drop --cpu") if config.cpu else (
            "no CUDA GPU here (torch.cuda.is_available() is False)", "run on a machine with a GPU")
        raise ConfigError(
            f"--decode-device {config.decode_device}: {why}; drop --decode-device (the decoding workers decode on the"
            f" CPU), or {other_fix}"
        )
    spec = config.data_options.spec
    if not spec.is_streamed:
        what = "pixels that prepare decoded once already" if spec.kind == "prepared" else "generated data"
        raise ConfigError(
            f"--decode-device {config.decode_device}: --data {config.data} is {what}, with no JPEGs to decode; drop --decode-device"
        )


def check_deepspeed(config: "TrainConfig") -> None:
    """What DeepSpeed ZeRO cannot run for this configuration (train/run/zero.py says why)."""
    if config.gradient_clipping < 0 or (config.gradient_clipping and not config.deepspeed):
        raise ConfigError(
            f"--gradient-clipping {config.gradient_clipping}: a value of 0 or more, and only with --deepspeed (DDP runs do not clip)"
        )
    use_cpu = config.runs_on_cpu()
    try:
        # The flag's precision: an accelerate config's fp16 on a CPU falls back to fp32 (precision.py).
        check_zero(config.deepspeed, config.mixed_precision or "no", use_cpu)
    except ZeroRefused as error:
        raise ConfigError(str(error)) from None
    if not config.deepspeed:
        return
    import torch

    if config.cpu and torch.cuda.is_available():
        raise ConfigError(
            f"--deepspeed {config.deepspeed} --cpu: Accelerate drops DeepSpeed when told to use the CPU, and puts it on the"
            " GPU otherwise; to train on the CPU, hide the GPUs (CUDA_VISIBLE_DEVICES=) and drop --cpu"
        )
    if config.sync_bn and not use_cpu:
        raise ConfigError(
            f"--deepspeed {config.deepspeed} --sync-bn: SyncBatchNorm under DeepSpeed engines is untested here; add"
            " --no-sync-bn (each GPU's own BatchNorm statistics) or train with DDP"
        )


def check_wandb_names(config: "TrainConfig") -> None:
    """What wandb.init would refuse seconds into the run (its project-name and tag rules)."""
    project = config.wandb_project
    if len(project) > WANDB_PROJECT_MAX or any(char in project for char in WANDB_PROJECT_FORBIDDEN):
        raise ConfigError(
            f"--wandb-project {project!r}: W&B project names have at most {WANDB_PROJECT_MAX} characters and none of"
            f" {' '.join(WANDB_PROJECT_FORBIDDEN)}; choose another name"
        )
    for tag in config.wandb_tags:
        if not 1 <= len(tag) <= WANDB_TAG_MAX:
            raise ConfigError(f"--wandb-tags {tag!r}: W&B tags have 1 to {WANDB_TAG_MAX} characters; shorten or drop it")


def check_run_dir(config: "TrainConfig") -> None:
    """What --out holds against what --resume asks, and for a resume a metrics.jsonl it can read whole;
    checked again once the run holds its lock."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; point --out at a folder (it is made if missing)")
    existing = nearest_existing(out)
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, so --out cannot be made there; choose another --out")
    if reason := not_writable_reason(existing):
        raise ConfigError(f"--out {out}: not writable ({reason}); choose another --out")
    checkpoint = latest_checkpoint(out)
    if config.resume == "yes" and checkpoint is None:
        raise ConfigError(f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume")
    # A run is there once it has a checkpoint: a start that died before its first one left nothing
    # to continue, and a new run begins over what it left.
    if config.resume == "no" and checkpoint is not None:
        raise ConfigError(f"--out {out} already holds a run; add --resume to continue it, or choose another --out")
    if checkpoint is not None and (out / METRICS_FILE).exists():  # a resume: it rewinds metrics.jsonl, after config.json
        try:
            read_lines(out / METRICS_FILE)
        except MetricsDamaged as error:
            raise ConfigError(f"--resume: {error}") from None
