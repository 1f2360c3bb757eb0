"""Run configuration: one dataclass per recipe, its CLI, presets, and checks before any compute.

Precedence, lowest first: the recipe's defaults, the --debug preset, the toy-data preset, the
run's saved config.json (with --resume), then the flags given on the command line.
"""
import argparse
import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence, TypeVar

from models import POINT_MODELS, ModelOptionError, check_model
from train.common.atomic import atomic_write_text
from train.data import DataOptions, parse_data_spec
from train.data.specs import DEFAULT_HUB_DATASET
from train.report.fid import INCEPTION_WEIGHTS, default_cache_dir
from train.report.monitor import CollapseThresholds
from train.report.tracking import WANDB_MODES
from train.run.checkpoint import latest_checkpoint
from train.run.stop import parse_duration

PRECISIONS = ("no", "fp16", "bf16")
RESUME_MODES = ("no", "yes", "auto")
# How this invocation runs, not what the run is: never taken from a resumed run's config.json.
SESSION_FIELDS = ("resume", "time_limit")


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
    lr: float = flag(1e-4, "Adam learning rate, both models")
    betas: tuple[float, float] = flag((0.0, 0.9), "Adam betas", nargs=2, type=float, metavar=("BETA1", "BETA2"))
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
    sync_bn: bool = flag(True, "SyncBatchNorm in the generator for multi-GPU runs (batch statistics over the global batch)")
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

    # Fields that shape the networks: a resumed run must keep them.
    architecture_fields: ClassVar[tuple[str, ...]] = (
        "model", "resolution", "latent_dim", "channel_base", "channel_max", "critic_norm", "mlp_hidden"
    )
    collapse_critic_key: ClassVar[str] = "d_loss"  # the statistic that sits near 0 when the critic wins outright
    debug_preset: ClassVar[dict[str, Any]] = DEBUG_PRESET
    toy_preset: ClassVar[dict[str, Any]] = TOY_PRESET

    def check_recipe(self) -> None:
        """A recipe's own checks of its own fields; raise ConfigError."""

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


def build_parser(config_cls: type[TrainConfig], description: str) -> argparse.ArgumentParser:
    # SUPPRESS defaults: the namespace then holds only the flags the user gave, which must win.
    parser = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS)
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
    out = Path(given.get("out", values["out"] if not given.get("debug") else config_cls.debug_preset["out"]))
    if _continues(given.get("resume", "no"), out):
        saved = _saved_config(out)
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
        if isinstance(f.default, tuple):
            values[f.name] = tuple(values[f.name])
    config = config_cls(**values)
    check_config(config)
    return config


def load_config(config_cls: type[Config], argv: Sequence[str] | None, description: str) -> Config:
    given = vars(build_parser(config_cls, description).parse_args(argv))
    return resolve_config(config_cls, given)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _saved_config(out: Path) -> dict[str, Any]:
    path = out / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume: {out} holds no run (no config.json); start without --resume")
    return json.loads(path.read_text())


def check_config(config: TrainConfig) -> None:
    """Every check that needs no compute, so a bad start fails before touching --out."""
    for name in ("batch_size", "grad_accum", "critic_steps", "max_steps", "log_every", "sample_every",
                 "ckpt_every", "keep_checkpoints", "num_samples", "latent_dim", "fid_samples", "nonfinite_patience"):
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(config, name)}: must be at least 1")
    for name in ("workers", "celeba_crop", "shuffle_buffer", "fid_every", "max_rollbacks"):
        if getattr(config, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(config, name)}: must be 0 or more")
    if not all(0 <= value <= 255 for value in config.alpha_background):
        raise ConfigError(f"--alpha-background {' '.join(map(str, config.alpha_background))}: give three values in 0..255, e.g. 255 255 255")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ConfigError(f"--ema-decay {config.ema_decay}: must be in [0, 1)")
    try:
        spec = config.data_options.spec
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        check_model(config.model, config.resolution, config.critic_norm, getattr(config, "attn_resolutions", ()))
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
    check_run_dir(config)


def check_run_dir(config: TrainConfig) -> None:
    """What --out holds against what --resume asks; checked again once the run holds its lock."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; point --out at a folder (it is made if missing)")
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
    atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")
