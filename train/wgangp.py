"""Train a WGAN-GP (Gulrajani et al. 2017): `accelerate launch train/wgangp.py [flags]`."""
# Stop signals are caught before the imports below, which take seconds (torch): a Slurm SIGTERM or a
# Ctrl-C then ends the run as it would later, instead of killing the process.
if __name__ == "__main__":
    from train.common.stop_signals import catch_stop_signals

    catch_stop_signals()

from dataclasses import dataclass

from train.gan.objectives import WGANGP
from train.run.config import ConfigError, TrainConfig, flag, redeclared
from train.run.runner import run_trainer


@dataclass
class WGANGPConfig(TrainConfig):
    gp_weight: float = flag(10.0, "gradient penalty weight, lambda (toy data: 0.1, the authors' toy value)", min=0)
    out: str = redeclared(TrainConfig, "out", "runs/wgangp")

    def check_recipe(self) -> None:
        if self.pack > 1:
            raise ConfigError(
                f"--pack {self.pack}: the gradient penalty takes each sample's own input gradient, not a pack's;"
                " pack with train/dcgan.py (non-saturating loss), or use --pack 1"
            )


def make_objective(config: WGANGPConfig, scaler, rng) -> WGANGP:
    return WGANGP(gp_weight=config.gp_weight, scaler=scaler, rng=rng)


if __name__ == "__main__":
    run_trainer(WGANGPConfig, make_objective, __doc__)
