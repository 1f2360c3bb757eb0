"""Train the lightweight GAN (Liu et al., ICLR 2021, "FastGAN"): `accelerate launch train/lightweight_gan.py [flags]`."""
from dataclasses import dataclass
from typing import Any, ClassVar

from train.gan.diffaugment import DiffAugment, parse_policy
from train.gan.objectives import FastGANHinge
from train.gan.reconstruction import (
    RECON_LOSSES,
    check_lpips_weights,
    reconstruction_loss,
)
from train.run.config import DEBUG_PRESET, ConfigError, TrainConfig, flag
from train.run.runner import run_trainer


@dataclass
class LightweightGANConfig(TrainConfig):
    resolution: int = flag(256, "image size in pixels: 64, 128, 256, 512 or 1024")
    model: str = flag("lightweight", "generator/discriminator pair", choices=("lightweight",))
    latent_dim: int = flag(256, "size of the generator's input noise")
    critic_norm: str = flag("none", "per-sample normalisation in the discriminator", choices=("none", "layer", "instance"))
    attn_resolutions: tuple[int, ...] = flag(
        (), "feature sizes with efficient attention in both networks, e.g. 32 64 (8 up to resolution/4)", nargs="*", type=int
    )
    batch_size: int = flag(16, "samples per process per forward")
    critic_steps: int = flag(1, "discriminator updates per generator update (the paper's: 1)")
    lr: float = flag(2e-4, "Adam learning rate, both models (the paper's)")
    betas: tuple[float, float] = flag((0.5, 0.999), "Adam betas (the paper's)", nargs=2, type=float, metavar=("BETA1", "BETA2"))
    diffaug_policy: str = flag("color,translation,cutout", "DiffAugment transformations, comma-separated; '' for none")
    diffaug_probability: float = flag(1.0, "probability that each transformation is applied to each image")
    recon_loss: str = flag("mse", "the decoders' reconstruction loss: mse, or lpips (needs torchvision's VGG16 weights on disk)", choices=RECON_LOSSES)
    recon_weight: float = flag(1.0, "weight of the reconstruction loss in the discriminator's loss")
    gp_weight: float = flag(0.0, "weight of a zero-centred gradient penalty on real images (R1); 0: off, the paper's")
    gp_every: int = flag(4, "discriminator steps between penalty evaluations (lazy regularisation)")
    out: str = flag("runs/lightweight", "run directory: config, metrics, samples, checkpoints")

    # The hinge, not d_loss: d_loss adds the reconstruction loss, which stays above 0 whoever wins.
    collapse_critic_key: ClassVar[str] = "hinge"
    architecture_fields: ClassVar[tuple[str, ...]] = TrainConfig.architecture_fields + ("attn_resolutions",)
    debug_preset: ClassVar[dict[str, Any]] = {
        **DEBUG_PRESET,
        "model": "lightweight",
        "latent_dim": 64,
        "attn_resolutions": (16,),
        "out": "runs/debug-lightweight",
    }
    toy_preset: ClassVar[dict[str, Any]] = {}  # images only

    def check_recipe(self) -> None:
        try:
            parse_policy(self.diffaug_policy)
        except ValueError as error:
            raise ConfigError(f"--diffaug-policy {self.diffaug_policy!r}: {error}") from None
        if not 0.0 <= self.diffaug_probability <= 1.0:
            raise ConfigError(f"--diffaug-probability {self.diffaug_probability}: must be in [0, 1]")
        for name in ("gp_weight", "recon_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be 0 or more")
        if self.instance_noise:
            raise ConfigError(
                f"--instance-noise {self.instance_noise}: the discriminator's decoders would learn to reconstruct the"
                " noise; DiffAugment (--diffaug-policy) is this model's regulariser: use --instance-noise 0"
            )
        if self.gp_every < 1:
            raise ConfigError(f"--gp-every {self.gp_every}: must be at least 1")
        if self.recon_loss == "lpips":
            try:
                check_lpips_weights()
            except FileNotFoundError as error:
                raise ConfigError(str(error)) from None


def make_objective(config: LightweightGANConfig, scaler, rng) -> FastGANHinge:
    return FastGANHinge(
        augment=DiffAugment(parse_policy(config.diffaug_policy), config.diffaug_probability),
        recon_loss=reconstruction_loss(config.recon_loss, rng.device),
        recon_weight=config.recon_weight,
        gp_weight=config.gp_weight,
        gp_every=config.gp_every,
        scaler=scaler,
        rng=rng,
    )


if __name__ == "__main__":
    run_trainer(LightweightGANConfig, make_objective, __doc__)
