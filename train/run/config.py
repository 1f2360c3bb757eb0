"""Run configuration: one dataclass per recipe, whose fields are its flags, and the presets.

A flag is declared once, on its field, with its limits (train/run/flags.py); the precedence of
defaults, presets, a resumed run's config.json and the flags given is train/run/resolve.py's, and
every check before any compute train/run/checks.py's. The names recipes, the runner and the loop
import stay importable from here.
"""
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from models import ModelOptions
from train.data import DataOptions, parse_data_spec
from train.data.device_decode import DECODE_DEVICES
from train.data.specs import DEFAULT_HUB_DATASET
from train.gan.augmented import AUGMENT_MODES, AugmentOptions
from train.report.fid import INCEPTION_WEIGHTS, default_cache_dir
from train.report.monitor import CollapseThresholds
from train.report.tracking import WANDB_MODES
from train.run.checks import check_config, check_run_dir
from train.run.flags import ConfigError, flag, redeclared
from train.run.precision import PRECISIONS
from train.run.resolve import Config, load_config, resolve_config, resuming, save_config
from train.run.stop import parse_duration

__all__ = [
    "DEBUG_PRESET", "TOY_PRESET", "Config", "ConfigError", "TrainConfig", "check_config", "check_run_dir",
    "collapse_thresholds", "collective_timeout_seconds", "flag", "load_config", "redeclared", "resolve_config", "resuming",
    "save_config", "time_limit_seconds",
]

RESUME_MODES = ("no", "yes", "auto")
SEED_MAX = 2**64 - 1  # torch.manual_seed's range
# Adam's betas: each a decay, below 1 for the moment estimates to forget.
BETAS = {"min": 0.0, "max": 1.0, "exclusive_max": True, "example": "0.0 0.9"}

DEBUG_PRESET: dict[str, Any] = {
    "data": "synthetic",
    "model": "dcgan",
    "resolution": 32,
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
        "hf:<dataset-id>, 'parquet:<glob>', a folder of images, synthetic, stacked-mnist (32 px, 1,000 modes), toy:8gaussians or toy:25gaussians",
        non_empty=True,
    )
    split: str = flag("train", "dataset split (hf: sources)", non_empty=True)
    image_column: str | None = flag(None, "the image column (default: the dataset's single Image column)", non_empty=True)
    resolution: int = flag(64, "image size in pixels: 32 (stacked-mnist), 64, 128, 256, 512 or 1024")
    celeba_crop: int = flag(0, "centre-crop this many pixels before resizing (108 for the original aligned CelebA); 0: off", min=0)
    hflip: bool = flag(True, "random horizontal flips of real images")
    alpha_background: tuple[int, int, int] = flag(
        (255, 255, 255), "the colour transparent pixels (PNG alpha, palette transparency) are composited onto", nargs=3, type=int,
        metavar=("R", "G", "B"), min=0, max=255, refusal="give three values in 0..255, e.g. 255 255 255",
    )
    shuffle_buffer: int = flag(1000, "rows in the streaming shuffle buffer", min=1)
    workers: int = flag(2, "decoding worker processes per rank (capped at the rank's shards)", min=0)
    decode_device: str = flag(
        "cpu", "where JPEGs are decoded: cpu (Pillow, in the decoding workers) or cuda (nvJPEG, a batch at a time on the"
        " rank's GPU, the workers only reading bytes: for 512 and 1024 px, where CPU cores cannot keep up)",
        choices=DECODE_DEVICES,
    )
    model: str = flag("resnet", "generator/critic pair", choices=("dcgan", "resnet", "mlp"))
    latent_dim: int = flag(128, "size of the generator's input noise", min=1)
    channel_base: int = flag(4096, "conv width rule: channels = channel_base / resolution, within [16, channel_max] (4096: the WGAN-GP paper's widths at 64 px)", min=1)
    channel_max: int = flag(512, "the cap on conv channels", min=1)
    critic_norm: str = flag("layer", "per-sample normalisation in the critic", choices=("layer", "instance", "none"))
    mlp_hidden: int = flag(512, "hidden width of the toy MLPs", min=1)
    batch_size: int = flag(64, "samples per process per forward", min=1)
    grad_accum: int = flag(1, "micro-batches accumulated per optimizer step (both models)", min=1)
    critic_steps: int = flag(5, "critic updates per generator update, each on a fresh real batch", min=1)
    lr: float = flag(1e-4, "Adam learning rate, both models (--g-lr / --d-lr set one)", min=0, exclusive_min=True)
    betas: tuple[float, float] = flag((0.0, 0.9), "Adam betas, both models (--g-betas / --d-betas set one)", nargs=2, type=float, metavar=("BETA1", "BETA2"), **BETAS)
    g_lr: float | None = flag(None, "the generator's Adam learning rate (default: --lr)", type=float, min=0, exclusive_min=True)
    d_lr: float | None = flag(None, "the critic's Adam learning rate (default: --lr)", type=float, min=0, exclusive_min=True)
    g_betas: tuple[float, float] | None = flag(None, "the generator's Adam betas (default: --betas)", nargs=2, type=float, metavar=("BETA1", "BETA2"), **BETAS)
    d_betas: tuple[float, float] | None = flag(None, "the critic's Adam betas (default: --betas)", nargs=2, type=float, metavar=("BETA1", "BETA2"), **BETAS)
    g_spectral_norm: bool = flag(False, "spectral normalisation of every generator layer (Miyato et al. 2018)")
    d_spectral_norm: bool = flag(False, "spectral normalisation of every critic layer (Miyato et al. 2018)")
    pack: int = flag(1, "PacGAN packing (Lin et al. 2018): the critic judges this many samples at once; 1: off", min=1)
    instance_noise: float = flag(
        0.0, "instance noise: Gaussian noise of std A*exp(-k*t/T) added to what the critic sees (Sonderby et al. 2017); A, 0: off"
    )
    instance_noise_decay: float = flag(4.0, "instance noise: k in A*exp(-k*t/T)")
    instance_noise_steps: int = flag(8000, "instance noise: T in A*exp(-k*t/T), in generator steps")
    instance_noise_real_only: bool = flag(False, "instance noise on real samples only (the sound form adds it to real and fake)")
    augment: str = flag(
        "none", "augmentation of every image the critic sees, real and generated, in both phases: none; fixed: DiffAugment's"
        " colour, translation and cutout on every image (Zhao et al. 2020); ada: those and an x-flip, each with a"
        " probability p steered by the overfitting heuristic (Karras et al. 2020; p and r_t in metrics.jsonl)",
        choices=AUGMENT_MODES,
    )
    ada_target: float = flag(0.6, "ADA: the target of r_t = E[sign(D(real))]; p rises while r_t is above it (the paper's 0.6)", min=0.0, max=1.0)
    ada_kimg: float = flag(500.0, "ADA: thousands of real images over which p can go from 0 to 1 (stylegan2-ada's 500)", min=0.0, exclusive_min=True)
    ema_decay: float = flag(0.999, "decay of the generator EMA used for samples (warmed up over the first steps)", min=0.0, max=1.0, exclusive_max=True)
    max_steps: int = flag(100_000, "generator steps to train for", min=1)
    seed: int = flag(0, "base seed; each rank draws latents from its own stream derived from it", min=0, max=SEED_MAX)
    out: str = flag("runs/train", "run directory: config, metrics, samples, checkpoints", non_empty=True)
    resume: str = flag(
        "no",
        "continue from the latest checkpoint in --out; 'auto': when there is one, else start (a launcher's rerun)",
        nargs="?", const="yes", choices=RESUME_MODES,
    )
    time_limit: str | None = flag(
        None, "wall-clock budget, e.g. 11h30m, 45m or 5400 (seconds): then stop with a checkpoint, exit code 75"
    )
    collective_timeout: str = flag(
        "10m", "the longest any rank waits for the others in one collective (e.g. 10m, 90s); a rank that stops answering"
        " for that long ends the run, resumably from its last checkpoint, exit code 75", non_empty=True,
    )
    mixed_precision: str | None = flag(
        None, "no, fp16 or bf16 (default: the accelerate config's); bf16 falls back to fp16 on GPUs without native bf16", choices=PRECISIONS
    )
    cpu: bool = flag(False, "train on the CPU even when a GPU is present")
    threads: int | None = flag(
        None, "intra-op CPU threads per process (default: $OMP_NUM_THREADS where you set it, else the CPUs this process"
        " may use, shared among this machine's processes, less one per decoding worker)", type=int, min=1,
    )
    deepspeed: int | None = flag(
        None, "DeepSpeed ZeRO stage for both networks, 1 (optimizer state partitioned) or 2 (and gradients)"
        " (default: the accelerate config's DeepSpeed stage, else off: DDP)", type=int,
    )
    gradient_clipping: float = flag(0.0, "DeepSpeed: clip each network's gradient norm at this value; 0: off, as under DDP")
    sync_bn: bool = flag(True, "SyncBatchNorm in the generator for multi-GPU runs (batch statistics over the global batch)")
    tf32: bool = flag(True, "TF32 matmuls and convolutions on Ampere and later GPUs (fp32 maths at tensor-core speed)")
    fused_adam: bool = flag(True, "Adam's fused CUDA kernel (GPU only)")
    channels_last: bool = flag(False, "channels-last memory format for both networks")
    log_every: int = flag(50, "generator steps between metrics.jsonl lines", min=1)
    sample_every: int = flag(1000, "generator steps between sample grids", min=1)
    ckpt_every: int = flag(2000, "generator steps between checkpoints", min=1)
    keep_checkpoints: int = flag(3, "checkpoints kept (oldest deleted once a new one is whole)", min=1)
    num_samples: int = flag(64, "fixed-noise samples in each grid", min=2, why="the diversity alarm compares pairs")
    wandb_project: str = flag("facegan", "W&B project", non_empty=True)
    wandb_entity: str | None = flag(None, "W&B entity, a team or user (default: your default entity)", non_empty=True)
    wandb_name: str | None = flag(None, "W&B run name (default: the --out folder's name)", non_empty=True)
    wandb_tags: tuple[str, ...] = flag((), "W&B tags", nargs="*", type=str)
    wandb_mode: str | None = flag(
        None, "online, offline or disabled (default: $WANDB_MODE, else online with an API key, offline without)", choices=WANDB_MODES
    )
    fid_every: int = flag(
        5000, "generator steps between evaluations of the EMA generator: FID/KID, or on stacked-mnist its modes, KL and"
        " Fréchet distance (sm_* in metrics.jsonl); 0: off", min=0,
    )
    fid_samples: int = flag(
        10000, "generated (and real) images per evaluation, over all ranks (stacked-mnist: PacGAN's tables use 26000)", min=1
    )
    fid_weights: str | None = flag(None, f"torch-fidelity's Inception weights file ({INCEPTION_WEIGHTS}), for machines without internet", non_empty=True)
    fid_cache: str = flag(str(default_cache_dir()), "where the real images' Inception features are cached", non_empty=True)
    collapse_loss_floor: float = flag(1e-3, "collapse alarm: critic loss within this of 0 ... (0: off)", min=0)
    collapse_patience: int = flag(5, "... for this many log lines in a row", min=1)
    collapse_flat_window: int = flag(20, "collapse alarm: generator loss over this many log lines ...", min=1)
    collapse_flat_tolerance: float = flag(1e-3, "... moving less than this, max - min (0: off)", min=0)
    collapse_diversity_drop: float = flag(0.5, "collapse alarm: fixed-noise sample diversity below this fraction of its maximum (0: off)",
        min=0.0, max=1.0, exclusive_max=True,
    )
    nonfinite_patience: int = flag(
        20, "non-finite steps in a row (each update with a NaN/Inf gradient is left out) before the run rolls back to its last checkpoint", min=1,
    )
    max_rollbacks: int = flag(3, "rollbacks before a run that keeps diverging stops with a checkpoint, exit code 4", min=0)
    stop_on_collapse: bool = flag(False, "stop the run with a checkpoint (exit code 3) when a collapse or divergence alarm fires")
    debug: bool = flag(False, "tiny model on synthetic data (MLP on toy data), a few dozen steps, no network")
    profile: int = flag(
        0, "profile this many steps after a 3-step warm-up: a torch.profiler trace in --out/profile/ (open it in"
        " ui.perfetto.dev or TensorBoard) and the top operators printed; 0: off", min=0,
    )

    # Fields that shape the networks: a resumed run must keep them.
    architecture_fields: ClassVar[tuple[str, ...]] = (
        "model", "resolution", "latent_dim", "channel_base", "channel_max", "critic_norm", "mlp_hidden",
        "g_spectral_norm", "d_spectral_norm", "pack",
    )
    collapse_critic_key: ClassVar[str] = "d_loss"  # the statistic that sits near 0 when the critic wins outright
    debug_preset: ClassVar[dict[str, Any]] = DEBUG_PRESET
    toy_preset: ClassVar[dict[str, Any]] = TOY_PRESET
    # Flags whose value brings settings of its own, {flag: {value: {field: value}}}: defaults that the
    # flags given still override (train/dcgan.py's --networks).
    choice_presets: ClassVar[dict[str, dict[Any, dict[str, Any]]]] = {}
    # The --augment modes the recipe's objective applies itself (the lightweight GAN's DiffAugment);
    # the others wrap the objective (train/gan/augmented.py).
    objective_augments: ClassVar[tuple[str, ...]] = ()

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

    def model_options(self) -> ModelOptions:
        """The networks' shape from the flags; a recipe whose models take more adds its own."""
        return ModelOptions(
            self.model, resolution=self.resolution, latent_dim=self.latent_dim, channel_base=self.channel_base,
            channel_max=self.channel_max, critic_norm=self.critic_norm, mlp_hidden=self.mlp_hidden,
            g_spectral_norm=self.g_spectral_norm, d_spectral_norm=self.d_spectral_norm, pack=self.pack,
        )

    def augment_options(self) -> AugmentOptions:
        """What wraps the objective: 'none' where the recipe's objective augments by itself."""
        mode = "none" if self.augment in self.objective_augments else self.augment
        return AugmentOptions(mode, ada_target=self.ada_target, ada_kimg=self.ada_kimg)

    @property
    def real_batches_per_step(self) -> int:
        """Real batches a step draws from the rank's stream before its first update (all held at once)."""
        return self.critic_steps * self.grad_accum

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
            batch_decode_device=None if self.decode_device == "cpu" else self.decode_device,
        )


def time_limit_seconds(config: TrainConfig) -> int | None:
    return None if config.time_limit is None else parse_duration(config.time_limit)


def collective_timeout_seconds(config: TrainConfig) -> int:
    return parse_duration(config.collective_timeout)


def collapse_thresholds(config: TrainConfig) -> CollapseThresholds:
    return CollapseThresholds(
        loss_floor=config.collapse_loss_floor,
        patience=config.collapse_patience,
        flat_window=config.collapse_flat_window,
        flat_tolerance=config.collapse_flat_tolerance,
        diversity_drop=config.collapse_diversity_drop,
    )
