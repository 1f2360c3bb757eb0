"""Train the lightweight GAN (Liu et al., ICLR 2021, "FastGAN"): `accelerate launch train/lightweight_gan.py [flags]`."""
# Stop signals are caught before the imports below, which take seconds (torch): a Slurm SIGTERM or a
# Ctrl-C then ends the run as it would later, instead of killing the process.
if __name__ == "__main__":
    from train.common.stop_signals import catch_stop_signals

    catch_stop_signals()

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from models import ModelOptions
from train.gan.diffaugment import DiffAugment, parse_policy
from train.gan.objectives import FastGANHinge
from train.gan.reconstruction import (
    RECON_LOSSES,
    check_lpips_weights,
    reconstruction_loss,
)
from train.run.config import DEBUG_PRESET, ConfigError, TrainConfig, flag, redeclared
from train.run.runner import run_trainer


@dataclass
class LightweightGANConfig(TrainConfig):
    resolution: int = redeclared(TrainConfig, "resolution", 256)
    model: str = redeclared(TrainConfig, "model", "lightweight", "generator/discriminator pair", choices=("lightweight",))
    latent_dim: int = redeclared(TrainConfig, "latent_dim", 256)
    critic_norm: str = redeclared(
        TrainConfig, "critic_norm", "none", "per-sample normalisation in the discriminator", choices=("none", "layer", "instance")
    )
    attn_resolutions: tuple[int, ...] = flag(
        (), "feature sizes with efficient attention in both networks, e.g. 32 64 (8 up to resolution/4)", nargs="*", type=int
    )
    batch_size: int = redeclared(TrainConfig, "batch_size", 16)
    critic_steps: int = redeclared(TrainConfig, "critic_steps", 1, "discriminator updates per generator update (the paper's: 1)")
    lr: float = redeclared(TrainConfig, "lr", 2e-4, "Adam learning rate, both models (the paper's)")
    betas: tuple[float, float] = redeclared(TrainConfig, "betas", (0.5, 0.999), "Adam betas (the paper's)")
    augment: str = redeclared(
        TrainConfig, "augment", "fixed", "augmentation of every image the discriminator sees: fixed: --diffaug-policy with"
        " --diffaug-probability (the paper's); ada: adaptive (Karras et al. 2020); none",
    )
    diffaug_policy: str = flag("color,translation,cutout", "DiffAugment transformations, comma-separated; '' for none")
    diffaug_probability: float = flag(1.0, "probability that each transformation is applied to each image", min=0.0, max=1.0)
    recon_loss: str = flag("mse", "the decoders' reconstruction loss: mse, or lpips (needs torchvision's VGG16 weights on disk)", choices=RECON_LOSSES)
    recon_weight: float = flag(1.0, "weight of the reconstruction loss in the discriminator's loss", min=0)
    gp_weight: float = flag(0.0, "weight of a zero-centred gradient penalty on real images (R1); 0: off, the paper's", min=0)
    gp_every: int = flag(4, "discriminator steps between penalty evaluations (lazy regularisation)", min=1)
    out: str = redeclared(TrainConfig, "out", "runs/lightweight")

    # The hinge, not d_loss: d_loss adds the reconstruction loss, which stays above 0 whoever wins.
    collapse_critic_key: ClassVar[str] = "hinge"
    architecture_fields: ClassVar[tuple[str, ...]] = TrainConfig.architecture_fields + ("attn_resolutions",)
    debug_preset: ClassVar[dict[str, Any]] = {
        **DEBUG_PRESET,
        "model": "lightweight",
        "resolution": 64,  # its attention at 16 px, one of the lightweight GAN's own resolutions
        "latent_dim": 64,
        "attn_resolutions": (16,),
        "out": "runs/debug-lightweight",
    }
    toy_preset: ClassVar[dict[str, Any]] = {}  # images only
    objective_augments: ClassVar[tuple[str, ...]] = ("fixed",)  # FastGANHinge's own DiffAugment

    def model_options(self) -> ModelOptions:
        return dataclasses.replace(super().model_options(), attn_resolutions=self.attn_resolutions)

    def check_recipe(self) -> None:
        try:
            parse_policy(self.diffaug_policy)
        except ValueError as error:
            raise ConfigError(f"--diffaug-policy {self.diffaug_policy!r}: {error}") from None
        fields = LightweightGANConfig.__dataclass_fields__
        if self.augment != "fixed" and (self.diffaug_policy, self.diffaug_probability) != (
                fields["diffaug_policy"].default, fields["diffaug_probability"].default):
            raise ConfigError(
                f"--augment {self.augment}: --diffaug-policy and --diffaug-probability are --augment fixed's;"
                " drop them, or use --augment fixed"
            )
        if self.instance_noise:
            raise ConfigError(
                f"--instance-noise {self.instance_noise}: the discriminator's decoders would learn to reconstruct the"
                " noise; DiffAugment (--diffaug-policy) is this model's regulariser: use --instance-noise 0"
            )
        if self.recon_loss == "lpips":
            try:
                check_lpips_weights()
            except FileNotFoundError as error:
                raise ConfigError(str(error)) from None


def make_objective(config: LightweightGANConfig, scaler, rng) -> FastGANHinge:
    return FastGANHinge(
        # Under --augment ada or none the objective augments nothing itself (train/gan/augmented.py).
        augment=DiffAugment(parse_policy(config.diffaug_policy) if config.augment == "fixed" else (), config.diffaug_probability),
        recon_loss=reconstruction_loss(config.recon_loss, rng.device),
        recon_weight=config.recon_weight,
        gp_weight=config.gp_weight,
        gp_every=config.gp_every,
        scaler=scaler,
        rng=rng,
    )


if __name__ == "__main__":
    run_trainer(LightweightGANConfig, make_objective, __doc__)
