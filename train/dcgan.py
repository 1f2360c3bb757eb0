"""Train a DCGAN (Radford et al. 2016), the PyTorch tutorial's networks by default, with the
stabilisers of the usual experiments: `accelerate launch train/dcgan.py [flags]`."""
# Stop signals are caught before the imports below, which take seconds (torch): a Slurm SIGTERM or a
# Ctrl-C then ends the run as it would later, instead of killing the process.
if __name__ == "__main__":
    from train.common.stop_signals import catch_stop_signals

    catch_stop_signals()

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from models import DCGAN_CHOICES, DCGAN_SWITCHES, DCGANOptions, ModelOptions
from train.gan.objectives import LabelSmoothing, NonSaturating, RpGAN, ZeroCentredPenalties
from train.gan.unrolled import Unrolling
from train.run.config import DEBUG_PRESET, TOY_PRESET, ConfigError, TrainConfig, flag, redeclared
from train.run.runner import run_trainer

UNROLL_MODES = ("exact", "lookahead")
LOSSES = ("ns", "rpgan")

# --networks: the published Stacked MNIST pairs (models/published.py) with what their reference code
# (github.com/fjxmlzn/PacGAN, stacked_MNIST_experiments/) trained them with, as defaults the flags given
# override. Not taken over: the reference's step counts (Metz: 500,000 steps; VEEGAN: 50 epochs of
# 2,000 steps, each with two generator updates, which this loop does not make) and VEEGAN's
# uniform(-1, 1) latents (here Gaussian, as everywhere).
REFERENCE_NETWORKS = {"resolution": 32, "g_norm": "batch", "critic_norm": "batch", "conv_bias": True, "dcgan_init": True}
METZ_TRAINING = {  # unrolled_GAN_experiment/D=0.25G/config.py and D=0.5G/config.py, the same
    "latent_dim": 256, "d_first_norm": True, "batch_size": 128, "g_lr": 1e-4, "d_lr": 2e-4, "betas": (0.5, 0.99),
}
NETWORK_PRESETS = {
    "metz-quarter": {**REFERENCE_NETWORKS, **METZ_TRAINING},
    "metz-half": {**REFERENCE_NETWORKS, **METZ_TRAINING},
    # VEEGAN_experiment/config.py; Adam's beta2 is TensorFlow's default
    "veegan": {**REFERENCE_NETWORKS, "latent_dim": 100, "d_first_norm": False, "batch_size": 64, "g_lr": 2e-4,
               "d_lr": 2e-4, "betas": (0.5, 0.999)},
}


@dataclass
class DCGANConfig(TrainConfig):
    model: str = redeclared(TrainConfig, "model", "dcgan", "generator/discriminator pair (mlp: the toy data's)", choices=("dcgan", "mlp"))
    latent_dim: int = redeclared(TrainConfig, "latent_dim", 100, "size of the generator's input noise (the tutorial's nz)")
    channel_base: int = redeclared(
        TrainConfig, "channel_base", 2048, "conv width rule: channels = channel_base / resolution, within [16, channel-max] (2048: the tutorial's ngf = ndf = 64 at 64 px)",
    )
    critic_norm: str = redeclared(
        TrainConfig, "critic_norm", "batch", "normalisation in the discriminator", choices=("batch", "layer", "instance", "none")
    )
    batch_size: int = redeclared(TrainConfig, "batch_size", 128)
    critic_steps: int = redeclared(TrainConfig, "critic_steps", 1, "discriminator updates per generator update")
    lr: float = redeclared(TrainConfig, "lr", 2e-4)
    betas: tuple[float, float] = redeclared(TrainConfig, "betas", (0.5, 0.999))
    # The architecture switches of the usual ablations: one flag per DCGANOptions field, of its name.
    networks: str = flag(
        "project",
        "project: the tutorial's networks, shaped by the switches below; or a published Stacked MNIST pair (PacGAN's"
        " tables, 32 px): metz-quarter / metz-half (Metz et al. 2017, the discriminator 1/4 / 1/2 of the generator's"
        " widths), veegan (VEEGAN's DCGAN); each also sets the reference's latent size, norms, Adam settings"
        " (--g-lr, --d-lr, --betas) and batch size, which flags override",
        choices=DCGAN_CHOICES["networks"],
    )
    g_norm: str = flag("batch", "normalisation in the generator", choices=DCGAN_CHOICES["g_norm"])
    d_first_norm: bool = flag(False, "normalise the discriminator's first layer too (the tutorial does not)")
    g_activation: str = flag("relu", "the generator's activation", choices=DCGAN_CHOICES["g_activation"])
    d_activation: str = flag("leaky_relu", "the discriminator's activation (leaky slope 0.2)", choices=DCGAN_CHOICES["d_activation"])
    upsample: str = flag("k4s2", "generator upsampling: ConvTranspose k4 s2 p1, or k2 s2 (no checkerboard overlap)", choices=DCGAN_CHOICES["upsample"])
    downsample: str = flag("strided", "discriminator downsampling: strided conv, or 3x3 conv + 2x2 max-pooling", choices=DCGAN_CHOICES["downsample"])
    g_dropout: float = flag(0.0, "Dropout2d probability after each generator block")
    d_dropout: float = flag(0.0, "Dropout2d probability after each discriminator block")
    conv_bias: bool = flag(False, "conv biases where no BatchNorm follows (the tutorial has none)")
    dcgan_init: bool = flag(True, "weights N(0, 0.02), BatchNorm weights N(1, 0.02) (the tutorial's)")
    # Label smoothing (Salimans et al. 2016; the "GAN hacks").
    real_label: float = flag(1.0, "the discriminator's target for real samples (one-sided smoothing: 0.9)")
    fake_label: float = flag(0.0, "the discriminator's target for fakes (two-sided smoothing, e.g. 0.15)")
    label_jitter: float = flag(0.0, "std of Gaussian noise added to every target (e.g. 0.15)", min=0)
    real_label_range: tuple[float, float] | None = flag(None, "draw each real target uniformly from [LOW, HIGH], e.g. 0.8 1.1", nargs=2, type=float, metavar=("LOW", "HIGH"))
    fake_label_range: tuple[float, float] | None = flag(None, "draw each fake target uniformly from [LOW, HIGH], e.g. 0.0 0.3", nargs=2, type=float, metavar=("LOW", "HIGH"))
    smooth_generator_target: bool = flag(False, "the generator's target drawn as the real one (else 1)")
    # The objective: the tutorial's, or R3GAN's; zero-centred penalties for either (train/gan/objectives.py).
    loss: str = flag("ns", "ns: non-saturating (Goodfellow et al. 2014); rpgan: relativistic pairing (Huang et al. 2024, R3GAN)", choices=LOSSES)
    r1_weight: float = flag(0.0, "gamma of R1, gamma/2 E||grad D(real)||^2 (Mescheder et al. 2018; StyleGAN2 uses it with ns); 0: off", min=0)
    r2_weight: float = flag(0.0, "gamma of R2, the same on generated samples (R3GAN: rpgan with R1 and R2, one gamma); 0: off", min=0)
    # Unrolled discriminator (Metz et al. 2017).
    unrolled_steps: int = flag(0, "take the generator's loss against the discriminator after this many further updates; 0: off", min=0)
    unroll_mode: str = flag("exact", "exact: gradients through the unrolled updates; lookahead: first-order, on a copy", choices=UNROLL_MODES)
    out: str = redeclared(TrainConfig, "out", "runs/dcgan")

    architecture_fields: ClassVar[tuple[str, ...]] = TrainConfig.architecture_fields + DCGAN_SWITCHES
    debug_preset: ClassVar[dict[str, Any]] = {**DEBUG_PRESET, "out": "runs/debug-dcgan"}
    choice_presets: ClassVar[dict[str, dict[Any, dict[str, Any]]]] = {"networks": NETWORK_PRESETS}
    # The toy MLPs know none of the conv switches: their defaults, so that the 'mlp' pair takes them.
    toy_preset: ClassVar[dict[str, Any]] = {
        **{k: v for k, v in TOY_PRESET.items() if k != "gp_weight"},
        "critic_norm": "none", "conv_bias": True, "dcgan_init": False, "betas": (0.5, 0.999),
    }

    def check_recipe(self) -> None:
        if self.loss == "rpgan" and (self.unrolled_steps or self.labels() != LabelSmoothing()):
            raise ConfigError(
                "--loss rpgan: label smoothing and the unrolled discriminator are the non-saturating loss's;"
                " drop those flags, or use --loss ns"
            )
        for name in ("real_label_range", "fake_label_range"):
            span = getattr(self, name)
            if span is not None and not span[0] < span[1]:
                raise ConfigError(f"--{name.replace('_', '-')} {span[0]} {span[1]}: LOW must be below HIGH, e.g. 0.8 1.1")
        if self.unrolled_steps and self.deepspeed:
            # The unrolled updates call the critic's parameters by name (train/gan/unrolled.py), which the
            # engine's module wrapper (train/run/zero.py) does not expose; not built for ZeRO.
            raise ConfigError(
                f"--deepspeed {self.deepspeed} --unrolled-steps {self.unrolled_steps}: the unrolled discriminator is not"
                " supported under DeepSpeed; use --unrolled-steps 0, or train with DDP"
            )
        if self.unrolled_steps and self.grad_accum > 1:
            raise ConfigError(
                f"--unrolled-steps {self.unrolled_steps}: unrolls on the last micro-batch only; use --grad-accum 1"
            )

    def model_options(self) -> ModelOptions:
        # By the option's own names: a switch without its flag here fails on the first build, never passes unseen.
        switches = DCGANOptions(**{name: getattr(self, name) for name in DCGAN_SWITCHES})
        return dataclasses.replace(super().model_options(), dcgan=switches)

    def labels(self) -> LabelSmoothing:
        return LabelSmoothing(self.real_label, self.fake_label, self.label_jitter, self.real_label_range,
                              self.fake_label_range, self.smooth_generator_target)


def make_objective(config: DCGANConfig, scaler, rng) -> NonSaturating | RpGAN:
    penalties = ZeroCentredPenalties(config.r1_weight, config.r2_weight)
    if config.loss == "rpgan":
        return RpGAN(penalties=penalties, scaler=scaler, rng=rng)
    unrolling = None
    if config.unrolled_steps:
        _, (d_lr, d_betas) = config.optimizer_settings()
        unrolling = Unrolling(config.unrolled_steps, d_lr, d_betas, exact=config.unroll_mode == "exact")
    return NonSaturating(labels=config.labels(), penalties=penalties, unrolling=unrolling, scaler=scaler, rng=rng)


if __name__ == "__main__":
    run_trainer(DCGANConfig, make_objective, __doc__)
