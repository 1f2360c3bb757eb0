"""Run configuration: one dataclass per recipe, its CLI, presets, and checks before any compute.

Precedence, lowest first: the recipe's defaults, the --debug preset, the toy-data preset, the
run's saved config.json (with --resume), then the flags given on the command line.
"""
import argparse
import dataclasses
import functools
import inspect
import json
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

from models import POINT_MODELS, DCGANOptions, ModelOptionError, check_model
from train.common.atomic import atomic_write_text
from train.data import DataOptions, parse_data_spec
from train.data.specs import DEFAULT_HUB_DATASET
from train.report.fid import INCEPTION_WEIGHTS, default_cache_dir
from train.report.monitor import CollapseThresholds
from train.report.tracking import WANDB_MODES
from train.run.checkpoint import latest_checkpoint
from train.run.environment import BadEnvironment, check_environment
from train.run.precision import PRECISIONS
from train.run.profiling import profile_steps_needed
from train.run.stop import parse_duration
from train.run.zero import ZeroRefused, check_zero, zero_from_environment

RESUME_MODES = ("no", "yes", "auto")
# How this invocation runs, not what the run is: never taken from a resumed run's config.json.
SESSION_FIELDS = ("resume", "time_limit", "profile")
# config.json's one entry that is not a flag: the recipe script that made the run.
TRAINER_KEY = "trainer"
# Text flags for which an empty value means nothing (an empty --out or --data would be the current folder).
NON_EMPTY_FIELDS = ("data", "split", "image_column", "out", "wandb_project", "wandb_entity", "wandb_name", "fid_weights", "fid_cache")
# wandb's own limits (wandb_settings.Settings.validate_project, validate_run_tags), refused at wandb.init.
WANDB_PROJECT_FORBIDDEN = "/\\#?%:"
WANDB_PROJECT_MAX, WANDB_TAG_MAX = 128, 64


def flag(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse_kwargs})


DEBUG_PRESET: dict[str, Any] = {
    "data": "synthetic",
    "model": "dcgan",
    "resolution": 64,
    "latent_dim": 64,
    "channel_base": 1024,
    "channel_max": 64,
    "mlp_hidden": 128,
    "batch_size": 8,
    "max_steps": 40,
    "log_every": 5,
    "sample_every": 20,
    "ckpt_every": 20,
    "num_samples": 16,
    "workers": 0,
    "wandb_mode": "disabled",
    "fid_every": 0,
    "out": "runs/debug",
}
# The WGAN-GP authors' toy code: 2-D noise, batch 256, Adam betas (0.5, 0.9) and lambda = 0.1;
# lambda = 10 leaves most of the 8 modes uncovered after 1000 steps.
TOY_PRESET: dict[str, Any] = {
    "model": "mlp", "latent_dim": 2, "batch_size": 256, "betas": (0.5, 0.9), "gp_weight": 0.1, "fid_every": 0,
}


@dataclass
class TrainConfig:
    """What every trainer shares; a recipe subclasses it with its objective's own values."""

    data: str = flag(
        f"hf:{DEFAULT_HUB_DATASET}",
        "hf:<dataset-id>, 'parquet:<glob>', a folder of images, synthetic, toy:8gaussians or toy:25gaussians",
    )
    split: str = flag("train", "dataset split (hf: sources)")
    image_column: str | None = flag(None, "the image column (default: the dataset's single Image column)")
    resolution: int = flag(64, "image size in pixels: 64, 128, 256, 512 or 1024")
    celeba_crop: int = flag(0, "centre-crop this many pixels before resizing (108 for the original aligned CelebA); 0: off")
    hflip: bool = flag(True, "random horizontal flips of real images")
    alpha_background: tuple[int, int, int] = flag(
        (255, 255, 255), "the colour transparent pixels (PNG alpha, palette transparency) are composited onto", nargs=3, type=int,
        metavar=("R", "G", "B"),
    )
    shuffle_buffer: int = flag(1000, "rows in the streaming shuffle buffer")
    workers: int = flag(2, "decoding worker processes per rank (capped at the rank's shards)")
    model: str = flag("resnet", "generator/critic pair", choices=("dcgan", "resnet", "mlp"))
    latent_dim: int = flag(128, "size of the generator's input noise")
    channel_base: int = flag(4096, "conv width rule: channels = channel_base / resolution, within [16, channel_max] (4096: the WGAN-GP paper's widths at 64 px)")
    channel_max: int = flag(512, "the cap on conv channels")
    critic_norm: str = flag("layer", "per-sample normalisation in the critic", choices=("layer", "instance", "none"))
    mlp_hidden: int = flag(512, "hidden width of the toy MLPs")
    batch_size: int = flag(64, "samples per process per forward")
    grad_accum: int = flag(1, "micro-batches accumulated per optimizer step (both models)")
    critic_steps: int = flag(5, "critic updates per generator update, each on a fresh real batch")
    lr: float = flag(1e-4, "Adam learning rate, both models (--g-lr / --d-lr set one)")
    betas: tuple[float, float] = flag((0.0, 0.9), "Adam betas, both models (--g-betas / --d-betas set one)", nargs=2, type=float, metavar=("BETA1", "BETA2"))
    g_lr: float | None = flag(None, "the generator's Adam learning rate (default: --lr)", type=float)
    d_lr: float | None = flag(None, "the critic's Adam learning rate (default: --lr)", type=float)
    g_betas: tuple[float, float] | None = flag(None, "the generator's Adam betas (default: --betas)", nargs=2, type=float, metavar=("BETA1", "BETA2"))
    d_betas: tuple[float, float] | None = flag(None, "the critic's Adam betas (default: --betas)", nargs=2, type=float, metavar=("BETA1", "BETA2"))
    g_spectral_norm: bool = flag(False, "spectral normalisation of every generator layer (Miyato et al. 2018)")
    d_spectral_norm: bool = flag(False, "spectral normalisation of every critic layer (Miyato et al. 2018)")
    pack: int = flag(1, "PacGAN packing (Lin et al. 2018): the critic judges this many samples at once; 1: off")
    instance_noise: float = flag(
        0.0, "instance noise: Gaussian noise of std A*exp(-k*t/T) added to what the critic sees (Sonderby et al. 2017); A, 0: off"
    )
    instance_noise_decay: float = flag(4.0, "instance noise: k in A*exp(-k*t/T)")
    instance_noise_steps: int = flag(8000, "instance noise: T in A*exp(-k*t/T), in generator steps")
    instance_noise_real_only: bool = flag(False, "instance noise on real samples only (the sound form adds it to real and fake)")
    ema_decay: float = flag(0.999, "decay of the generator EMA used for samples (warmed up over the first steps)")
    max_steps: int = flag(100_000, "generator steps to train for")
    seed: int = flag(0, "base seed; each rank draws latents from its own stream derived from it")
    out: str = flag("runs/train", "run directory: config, metrics, samples, checkpoints")
    resume: str = flag(
        "no",
        "continue from the latest checkpoint in --out; 'auto': when there is one, else start (a launcher's rerun)",
        nargs="?", const="yes", choices=RESUME_MODES,
    )
    time_limit: str | None = flag(
        None, "wall-clock budget, e.g. 11h30m, 45m or 5400 (seconds): then stop with a checkpoint, exit code 75"
    )
    mixed_precision: str | None = flag(
        None, "no, fp16 or bf16 (default: the accelerate config's); bf16 falls back to fp16 on GPUs without native bf16", choices=PRECISIONS
    )
    cpu: bool = flag(False, "train on the CPU even when a GPU is present")
    deepspeed: int | None = flag(
        None, "DeepSpeed ZeRO stage for both networks, 1 (optimizer state partitioned) or 2 (and gradients)"
        " (default: the accelerate config's DeepSpeed stage, else off: DDP)", type=int,
    )
    gradient_clipping: float = flag(0.0, "DeepSpeed: clip each network's gradient norm at this value; 0: off, as under DDP")
    sync_bn: bool = flag(True, "SyncBatchNorm in the generator for multi-GPU runs (batch statistics over the global batch)")
    tf32: bool = flag(True, "TF32 matmuls and convolutions on Ampere and later GPUs (fp32 maths at tensor-core speed)")
    fused_adam: bool = flag(True, "Adam's fused CUDA kernel (GPU only)")
    channels_last: bool = flag(False, "channels-last memory format for both networks")
    log_every: int = flag(50, "generator steps between metrics.jsonl lines")
    sample_every: int = flag(1000, "generator steps between sample grids")
    ckpt_every: int = flag(2000, "generator steps between checkpoints")
    keep_checkpoints: int = flag(3, "checkpoints kept (oldest deleted once a new one is whole)")
    num_samples: int = flag(64, "fixed-noise samples in each grid")
    wandb_project: str = flag("facegan", "W&B project")
    wandb_entity: str | None = flag(None, "W&B entity, a team or user (default: your default entity)")
    wandb_name: str | None = flag(None, "W&B run name (default: the --out folder's name)")
    wandb_tags: tuple[str, ...] = flag((), "W&B tags", nargs="*", type=str)
    wandb_mode: str | None = flag(
        None, "online, offline or disabled (default: $WANDB_MODE, else online with an API key, offline without)", choices=WANDB_MODES
    )
    fid_every: int = flag(5000, "generator steps between FID/KID evaluations of the EMA generator; 0: off")
    fid_samples: int = flag(10000, "generated (and real) images per FID/KID evaluation, over all ranks")
    fid_weights: str | None = flag(None, f"torch-fidelity's Inception weights file ({INCEPTION_WEIGHTS}), for machines without internet")
    fid_cache: str = flag(str(default_cache_dir()), "where the real images' Inception features are cached")
    collapse_loss_floor: float = flag(1e-3, "collapse alarm: critic loss within this of 0 ... (0: off)")
    collapse_patience: int = flag(5, "... for this many log lines in a row")
    collapse_flat_window: int = flag(20, "collapse alarm: generator loss over this many log lines ...")
    collapse_flat_tolerance: float = flag(1e-3, "... moving less than this, max - min (0: off)")
    collapse_diversity_drop: float = flag(0.5, "collapse alarm: fixed-noise sample diversity below this fraction of its maximum (0: off)")
    nonfinite_patience: int = flag(
        20, "non-finite steps in a row (each update with a NaN/Inf gradient is left out) before the run rolls back to its last checkpoint"
    )
    max_rollbacks: int = flag(3, "rollbacks before a run that keeps diverging stops with a checkpoint, exit code 4")
    stop_on_collapse: bool = flag(False, "stop the run with a checkpoint (exit code 3) when a collapse or divergence alarm fires")
    debug: bool = flag(False, "tiny model on synthetic data (MLP on toy data), a few dozen steps, no network")
    profile: int = flag(
        0, "profile this many steps after a 3-step warm-up: a torch.profiler trace in --out/profile/ (open it in"
        " ui.perfetto.dev or TensorBoard) and the top operators printed; 0: off"
    )

    # Fields that shape the networks: a resumed run must keep them.
    architecture_fields: ClassVar[tuple[str, ...]] = (
        "model", "resolution", "latent_dim", "channel_base", "channel_max", "critic_norm", "mlp_hidden",
        "g_spectral_norm", "d_spectral_norm", "pack",
    )
    collapse_critic_key: ClassVar[str] = "d_loss"  # the statistic that sits near 0 when the critic wins outright
    debug_preset: ClassVar[dict[str, Any]] = DEBUG_PRESET
    toy_preset: ClassVar[dict[str, Any]] = TOY_PRESET

    def check_recipe(self) -> None:
        """A recipe's own checks of its own fields; raise ConfigError."""

    def optimizer_settings(self) -> tuple[tuple[float, tuple[float, float]], tuple[float, tuple[float, float]]]:
        """((generator lr, betas), (critic lr, betas)): each network's own, else the shared --lr / --betas."""
        return (
            (self.g_lr if self.g_lr is not None else self.lr, self.g_betas if self.g_betas is not None else self.betas),
            (self.d_lr if self.d_lr is not None else self.lr, self.d_betas if self.d_betas is not None else self.betas),
        )

    def runs_on_cpu(self) -> bool:
        """--cpu, or no CUDA GPU here."""
        import torch

        return self.cpu or not torch.cuda.is_available()

    @functools.cached_property
    def data_options(self) -> DataOptions:
        """The data flags as one value, the spec parsed (a folder listed) once; DataSpecError if bad."""
        return DataOptions(
            spec=parse_data_spec(self.data),
            resolution=self.resolution,
            split=self.split,
            image_column=self.image_column,
            celeba_crop=self.celeba_crop,
            hflip=self.hflip,
            shuffle_buffer=self.shuffle_buffer,
            workers=self.workers,
            background=self.alpha_background,
        )


Config = TypeVar("Config", bound=TrainConfig)


class ConfigError(ValueError):
    """A bad flag or run directory; the message names the input and the fix."""


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one `error:` line, like every other bad input (its usage, dozens of
    lines for these flags, stays in --help); exit code 2, as argparse's."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser(config_cls: type[TrainConfig], description: str) -> argparse.ArgumentParser:
    # SUPPRESS defaults: the namespace then holds only the flags the user gave, which must win.
    parser = OneLineParser(description=description, argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {k: v for k, v in f.metadata.items()}
        kwargs["help"] = f"{kwargs['help']} (default: {f.default})"
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "type" not in kwargs:
            kwargs["type"] = type(f.default) if f.default is not None else str
        parser.add_argument(flag, dest=f.name, **kwargs)
    return parser


def resolve_config(config_cls: type[Config], given: dict[str, Any]) -> Config:
    """Merge defaults, presets, a resumed run's saved config and the given flags; then check it."""
    values = dataclasses.asdict(config_cls())
    given = {**_zero_from_launcher(given), **given}
    out = Path(given.get("out", values["out"] if not given.get("debug") else config_cls.debug_preset["out"]))
    if _continues(given.get("resume", "no"), out):
        saved = _saved_config(config_cls, out)
        if given.get("debug") and not saved.get("debug"):  # the preset would be ignored: the run's settings win
            raise ConfigError(
                f"--debug: the run in {out} was not made with --debug, and --resume continues it with its own"
                " settings; drop --debug"
            )
        if "deepspeed" in given and given["deepspeed"] != saved.get("deepspeed"):
            raise ConfigError(_checkpoint_kind_differs(out, given["deepspeed"], saved.get("deepspeed")))
        for name in config_cls.architecture_fields:
            if name in given and _plain(given[name]) != _plain(saved.get(name)):
                raise ConfigError(
                    f"--{name.replace('_', '-')} {given[name]} differs from the run in {out} ({saved.get(name)});"
                    " drop the flag to resume, or start a new run in another --out"
                )
        values.update({k: v for k, v in saved.items() if k in values and k not in SESSION_FIELDS})
    else:
        if given.get("debug"):
            values.update(config_cls.debug_preset)
        if given.get("data", values["data"]).startswith("toy:"):  # the toy preset; check_config judges the name
            values.update({k: v for k, v in config_cls.toy_preset.items() if k in values})
    values.update(given)
    for f in dataclasses.fields(config_cls):  # JSON and argparse give lists
        if isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    config = config_cls(**values)
    check_config(config)
    return config


def _zero_from_launcher(given: dict[str, Any]) -> dict[str, Any]:
    """--deepspeed and --gradient-clipping from an `accelerate launch` DeepSpeed config, where the
    flags are not given: the launcher's choice counts as given (a resumed run's config.json does not
    override it)."""
    try:  # the launcher's own settings first (stage, offload, "auto" clipping); the precision with the flags
        check_zero(None, "no", use_cpu=False)
    except ZeroRefused as error:
        raise ConfigError(str(error)) from None
    stage, clipping = zero_from_environment()
    if stage is None:
        return {}
    return {name: value for name, value in (("deepspeed", stage), ("gradient_clipping", clipping)) if name not in given}


def _checkpoint_kind_differs(out: Path, asked: int | None, saved: int | None) -> str:
    """A resume whose DeepSpeed setting is not the run's: DDP checkpoints hold model.safetensors and
    optimizer.bin, DeepSpeed ones each engine's partitioned states, and neither loads the other."""
    def described(stage: int | None) -> str:
        return f"DeepSpeed ZeRO-{stage}" if stage else "DDP (no DeepSpeed)"

    flag = f"--deepspeed {asked}" if asked is not None else "no --deepspeed"
    return (
        f"{flag}: the run in {out} was trained with {described(saved)} and its checkpoints load only that way"
        f" (not with {described(asked)}); resume it as it was made (the same --deepspeed, or the same accelerate"
        " config), or start a new run in another --out"
    )


def load_config(config_cls: type[Config], argv: Sequence[str] | None, description: str) -> Config:
    given = vars(build_parser(config_cls, description).parse_args(argv))
    return resolve_config(config_cls, given)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def trainer_script(config_cls: type[TrainConfig]) -> str:
    """The recipe script a config class is defined in, from the repository's root: train/wgangp.py."""
    try:
        path = Path(inspect.getfile(config_cls))
    except (TypeError, OSError):  # defined at a prompt
        return config_cls.__qualname__
    return f"{path.parent.name}/{path.name}"


def _saved_config(config_cls: type[TrainConfig], out: Path) -> dict[str, Any]:
    """A resumed run's config.json, refused when hand-editing broke it or another trainer made it."""
    path = out / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume: {out} holds no run (no config.json); start without --resume")
    repair = "config.json holds the run's settings and the checkpoints its weights"
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"--resume: {path} is not valid JSON ({error.msg} at line {error.lineno}); repair that line ({repair})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"--resume: {path} is not text; restore it from a copy ({repair})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: {path} holds no {{\"setting\": value, ...}} object; restore it from a copy ({repair})")
    trainer, made_by = trainer_script(config_cls), saved.pop(TRAINER_KEY, None)
    if made_by is not None and made_by != trainer:
        raise ConfigError(f"--resume: the run in {out} was made by {made_by}; resume it with that script, not {trainer}")
    fields, hints = {f.name: f for f in dataclasses.fields(config_cls)}, typing.get_type_hints(config_cls)
    models = fields["model"].metadata["choices"]
    if made_by is None and saved.get("model", models[0]) not in models:  # a run saved before the trainer was
        raise ConfigError(
            f"--resume: the run in {out} was made by another trainer (its model, {saved['model']!r}, is not one of"
            f" {trainer}'s: {', '.join(models)}); resume it with the script that made it"
        )
    for name, value in saved.items():
        if name not in fields:
            raise ConfigError(f"--resume: {path}: {name!r} is no setting of {trainer}; delete that line")
        if not _fits(value, hints[name]):
            raise ConfigError(
                f"--resume: {path}: \"{name}\": {json.dumps(value)} is not {_describe(hints[name])}; fix that line ({repair})"
            )
    return saved


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a field of type `hint` (JSON has lists where fields have tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # JSON's NaN and Infinity included: json.loads takes them
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(item, args[0]) for item in value)
        return len(value) == len(args) and all(_fits(item, arg) for item, arg in zip(value, args))
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ')}s"
        return f"a list of {len(args)} {_describe(args[0]).removeprefix('a ')}s"
    return {type(None): "null", bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}.get(
        hint, str(hint)
    )


def check_config(config: TrainConfig) -> None:
    """Every check that needs no compute, so a bad start fails before touching --out."""
    for f in dataclasses.fields(config):  # argparse's float() takes nan and inf, and so does JSON
        value = getattr(config, f.name)
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,))):
            raise ConfigError(f"--{f.name.replace('_', '-')} {_shown(value)}: must be a finite number")
        if f.name in NON_EMPTY_FIELDS and isinstance(value, str) and not value.strip():
            raise ConfigError(f"--{f.name.replace('_', '-')} {value!r}: empty; give a value, or leave the flag out for its default")
    # shuffle_buffer: datasets' shuffle refuses an empty buffer ("high <= 0") once the first batch is read.
    for name in ("batch_size", "grad_accum", "critic_steps", "max_steps", "log_every", "sample_every",
                 "ckpt_every", "keep_checkpoints", "latent_dim", "fid_samples", "nonfinite_patience",
                 "shuffle_buffer", "channel_base", "channel_max", "mlp_hidden"):
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(config, name)}: must be at least 1")
    for name in ("workers", "celeba_crop", "fid_every", "max_rollbacks", "seed", "profile"):
        if getattr(config, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(config, name)}: must be 0 or more")
    if config.profile and profile_steps_needed(config.profile) > config.max_steps:
        raise ConfigError(
            f"--profile {config.profile}: the profile ends at step {profile_steps_needed(config.profile)} (after a"
            f" {profile_steps_needed(0)}-step warm-up), beyond --max-steps {config.max_steps}; raise --max-steps or lower --profile"
        )
    if config.num_samples < 2:  # the collapse monitor measures each grid's diversity between pairs of samples
        raise ConfigError(f"--num-samples {config.num_samples}: must be at least 2 (the diversity alarm compares pairs)")
    for name in ("lr", "g_lr", "d_lr"):
        if getattr(config, name) is not None and not getattr(config, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(config, name)}: must be above 0")
    for name in ("betas", "g_betas", "d_betas"):
        if getattr(config, name) is not None and not all(0.0 <= beta < 1.0 for beta in getattr(config, name)):
            raise ConfigError(f"--{name.replace('_', '-')} {_shown(getattr(config, name))}: each must be in [0, 1), e.g. 0.0 0.9")
    if config.batch_size % config.pack:
        raise ConfigError(
            f"--pack {config.pack}: --batch-size {config.batch_size} must be a multiple of it (real and fake are packed apart)"
        )
    if config.instance_noise < 0 or config.instance_noise_decay < 0 or config.instance_noise_steps < 1:
        raise ConfigError(
            f"--instance-noise {config.instance_noise} / --instance-noise-decay {config.instance_noise_decay} /"
            f" --instance-noise-steps {config.instance_noise_steps}: A and k must be 0 or more, T at least 1"
        )
    if config.fid_every and config.fid_samples < 4:
        raise ConfigError(
            f"--fid-samples {config.fid_samples}: FID and KID need at least 4 (10000+ for stable numbers); raise it, or"
            " turn FID off with --fid-every 0"
        )
    check_wandb_names(config)
    if not all(0 <= value <= 255 for value in config.alpha_background):
        raise ConfigError(f"--alpha-background {' '.join(map(str, config.alpha_background))}: give three values in 0..255, e.g. 255 255 255")
    check_deepspeed(config)
    if not 0.0 <= config.ema_decay < 1.0:
        raise ConfigError(f"--ema-decay {config.ema_decay}: must be in [0, 1)")
    try:
        spec = config.data_options.spec
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        dcgan = DCGANOptions(**{f.name: getattr(config, f.name) for f in dataclasses.fields(DCGANOptions) if hasattr(config, f.name)})
        check_model(config.model, config.resolution, config.critic_norm, getattr(config, "attn_resolutions", ()),
                    dcgan=dcgan, pack=config.pack)
    except ModelOptionError as error:
        raise ConfigError(f"--{error.option.replace('_', '-')}: {error}") from None
    models = next(f for f in dataclasses.fields(config) if f.name == "model").metadata["choices"]
    if config.model not in models:
        raise ConfigError(f"--model {config.model}: this trainer takes {', '.join(models)}")
    if spec.is_points and config.model not in POINT_MODELS:
        if not set(models) & set(POINT_MODELS):
            raise ConfigError(f"--data {config.data} is 2-D points, which this trainer's models do not take; use images")
        raise ConfigError(f"--model {config.model}: --data {config.data} is 2-D points; use --model mlp")
    if spec.is_points and config.fid_every:
        raise ConfigError(f"--fid-every {config.fid_every}: FID compares images, --data {config.data} is points; use --fid-every 0")
    if not spec.is_points and config.model in POINT_MODELS:
        image_models = " or ".join(m for m in models if m not in POINT_MODELS)
        raise ConfigError(f"--model {config.model} is for toy data; for images use --model {image_models}")
    try:
        collapse_thresholds(config)
    except ValueError as error:
        raise ConfigError(f"--collapse-{str(error).replace('_', '-')}") from None
    config.check_recipe()
    if config.time_limit is not None:
        try:
            time_limit_seconds(config)
        except ValueError as error:
            raise ConfigError(
                f"--time-limit {config.time_limit}: {error}; give a duration such as 11h30m, 45m, 90s, 5400 or 11:30:00"
            ) from None
    # After the flags, whose errors answer without importing wandb (for its API-key rule).
    try:
        check_environment(wandb_mode=config.wandb_mode, mixed_precision=config.mixed_precision)
    except BadEnvironment as error:
        raise ConfigError(str(error)) from None
    check_run_dir(config)


def check_deepspeed(config: TrainConfig) -> None:
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


def check_wandb_names(config: TrainConfig) -> None:
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


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def check_run_dir(config: TrainConfig) -> None:
    """What --out holds against what --resume asks; checked again once the run holds its lock."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; point --out at a folder (it is made if missing)")
    # Where the run's first write lands: --out, or the folder it is made in. os.access answers
    # for a read-only mount even as root, whom permission bits do not stop.
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, so --out cannot be made there; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        reason = f"{existing} is on a read-only file system" if read_only else f"no permission to write in {existing}"
        raise ConfigError(f"--out {out}: not writable ({reason}); choose another --out")
    if config.resume == "yes" and latest_checkpoint(out) is None:
        raise ConfigError(f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume")
    # A run is there once it has a checkpoint: a start that died before its first one left nothing
    # to continue, and a new run begins over what it left.
    if config.resume == "no" and latest_checkpoint(out) is not None:
        raise ConfigError(f"--out {out} already holds a run; add --resume to continue it, or choose another --out")


def resuming(config: TrainConfig) -> bool:
    """Whether this run continues from a checkpoint: --resume, or --resume auto with one in --out."""
    return _continues(config.resume, Path(config.out))


def _continues(resume: str, out: Path) -> bool:
    return resume == "yes" or (resume == "auto" and latest_checkpoint(out) is not None)


def time_limit_seconds(config: TrainConfig) -> int | None:
    return None if config.time_limit is None else parse_duration(config.time_limit)


def collapse_thresholds(config: TrainConfig) -> CollapseThresholds:
    return CollapseThresholds(
        loss_floor=config.collapse_loss_floor,
        patience=config.collapse_patience,
        flat_window=config.collapse_flat_window,
        flat_tolerance=config.collapse_flat_tolerance,
        diversity_drop=config.collapse_diversity_drop,
    )


def save_config(config: TrainConfig, out: Path) -> None:
    """config.json: every flag's value, and which recipe made the run (--resume checks it)."""
    saved = {TRAINER_KEY: trainer_script(type(config)), **dataclasses.asdict(config)}
    atomic_write_text(out / "config.json", json.dumps(saved, indent=2) + "\n")
