"""What the loop scores at --fid-every: the EMA generator's FID and KID, or, on --data stacked-mnist,
the benchmark's own scores (train/report/stacked_mnist.py: modes covered of 1,000, KL to the uniform
modes, Fréchet distance in the digit classifier's features), as train/evaluate.py judges the run.

One cadence and one sample count (--fid-every, --fid-samples) for whichever the data calls for:
Inception FID of three stacked digits is neither what PacGAN's and VEEGAN's tables report nor free
(Inception weights, 2048-d features on the CPU), and a run needs one curve of its quality over time.
"""
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from torch import nn

from train.report.fid import FIDEvaluator, FIDUnavailable

if TYPE_CHECKING:
    from accelerate import Accelerator

    from train.run.config import TrainConfig

STACKED_MNIST_PREFIX = "sm_"  # sm_modes, sm_kl, sm_frechet, sm_samples: apart from the toy data's and FID's keys


class Evaluator(Protocol):
    """FIDEvaluator's and StackedMNISTEvaluator's shape: collective, the same numbers on every rank."""

    def evaluate(self, generator: nn.Module, latent_dim: int) -> dict[str, float]: ...


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """An evaluator and the names its scores and sample count take in metrics.jsonl and W&B."""

    evaluator: Evaluator
    num_samples: int
    prefix: str  # before each score's name
    samples_key: str

    def scores(self, generator: nn.Module, latent_dim: int) -> dict[str, float]:
        """Collective: every rank calls it and gets the same record."""
        scores = self.evaluator.evaluate(generator, latent_dim)
        return {**{self.prefix + name: value for name, value in scores.items()}, self.samples_key: self.num_samples}


def open_evaluation(config: "TrainConfig", accelerator: "Accelerator") -> Evaluation | None:
    """The run's evaluation under --fid-every, else None; also None, said once, where it cannot run."""
    if not config.fid_every:
        return None
    if config.data_options.spec.kind == "stacked-mnist":
        return _stacked_mnist(config, accelerator)
    try:
        evaluator = FIDEvaluator(
            accelerator,
            config.data_options,
            num_samples=config.fid_samples,
            batch_size=config.batch_size,
            cache_dir=Path(config.fid_cache).expanduser(),
            seed=config.seed,
            weights_path=config.fid_weights,
        )
    except FIDUnavailable as error:  # a long run is worth more than its FID curve
        if accelerator.is_main_process:
            print(f"error: {error}; training continues with FID disabled", file=sys.stderr)
        return None
    return Evaluation(evaluator, config.fid_samples, prefix="", samples_key="fid_samples")


def _stacked_mnist(config: "TrainConfig", accelerator: "Accelerator") -> Evaluation | None:
    # Imported here: the classifier's module is only needed, and only its cache read (or, once per
    # machine, its training), where a run scores stacked digits.
    from train.report.stacked_mnist import ClassifierUnfit, StackedMNISTEvaluator

    try:
        # The generated set is evaluate.py's for the same sample count: FID's seeded blocks of the run's batch size.
        evaluator = StackedMNISTEvaluator(accelerator, num_samples=config.fid_samples, batch_size=config.batch_size, seed=config.seed)
    except ClassifierUnfit as error:
        if accelerator.is_main_process:
            print(f"error: {error}; training continues without the Stacked MNIST scores", file=sys.stderr)
        return None
    return Evaluation(evaluator, config.fid_samples, prefix=STACKED_MNIST_PREFIX, samples_key=f"{STACKED_MNIST_PREFIX}samples")
