"""Stacked MNIST's scores: how many of the 1,000 modes a generator makes, how evenly, and how close
its images are to real ones, all judged by a digit classifier the project trains itself.

- Modes (PacGAN, Lin et al. 2018, Table 2; after Metz et al. 2017 and VEEGAN): each channel of a
  sample is classified, the sample's mode is the three digits (0..999); a mode is covered by at
  least one sample; `kl` is KL(p_gen || uniform over 1,000) in nats over the observed modes
  (0 log 0 = 0): 0 for a uniform histogram, ln 1000 = 6.91 for a single mode.
- Fréchet distance (FID's formula, Heusel et al. 2017) in the classifier's penultimate features,
  each channel's features concatenated (3 x 64). The reference is the real distribution's exact
  statistics, not a sample: the channels are independent draws of the 5,000 digits, so its mean
  is the digits' mean feature three times and its covariance block-diagonal with the digits'
  covariance. A finite real sample's own distance to it is the real floor.
- The classifier (three 3x3 conv + max-pool stages, 64 features, 10 logits) is trained on 4,000 of
  the 5,000 digits (a seeded random split: the file is sorted by label), must reach 97% on the
  other 1,000, and is cached as safetensors under a name keyed by its recipe: it trains once
  (about 15 s on one CPU core) per machine.
"""
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from train.common.atomic import atomic_write
from train.data.stacked_mnist import CHANNELS, CLASSES, mnist_digits, stacked_images, stacked_indices
from train.report.fid import gather_shares, generated_blocks, rank_share, to_uint8

if TYPE_CHECKING:
    from accelerate import Accelerator

MODES = CLASSES**CHANNELS
MIN_ACCURACY = 0.97
REAL_FLOOR_SAMPLES = 26_000  # as many real samples as PacGAN and VEEGAN generate
REAL_SEED = 0  # the real floor's samples: a function of the sample count alone
SCORE_CHUNK = 1000  # images classified per forward: 26,000 x 3 digits at once would be 300 MB of floats


class ClassifierUnfit(RuntimeError):
    """The digit classifier fell short of MIN_ACCURACY on its held-out digits: its scores would mislead."""


@dataclass(frozen=True)
class ClassifierRecipe:
    """Everything that decides the trained classifier; its hash names the cache file."""

    widths: tuple[int, int, int] = (16, 32, 64)
    features: int = 64
    train_digits: int = 4000  # of the 5,000; the other 1,000 are held out
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3  # one-cycle peak
    max_shift: int = 2  # random translation, in pixels: the padding and MNIST's own margin allow it
    dropout: float = 0.3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class DigitClassifier(nn.Module):
    """One 32 px digit in [-1, 1] (N, 1, 32, 32) -> 10 logits; `features` is the penultimate layer."""

    def __init__(self, recipe: ClassifierRecipe = ClassifierRecipe()):
        super().__init__()
        a, b, c = recipe.widths
        stage = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]  # noqa: E731
        self.body = nn.Sequential(
            *stage(1, a), *stage(a, b), *stage(b, c), nn.Flatten(), nn.Linear(c * 4 * 4, recipe.features), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Dropout(recipe.dropout), nn.Linear(recipe.features, CLASSES))
        self.num_features = recipe.features

    def features(self, digits: torch.Tensor) -> torch.Tensor:
        return self.body(digits)

    def forward(self, digits: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(digits))


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "facegan" / "stacked-mnist"


def _as_input(digits: torch.Tensor) -> torch.Tensor:
    """uint8 digits (N, 32, 32) -> the classifier's input, as to_model_input scales images."""
    return digits.float().div(127.5).sub(1.0).unsqueeze(1)


def _shifted(batch: torch.Tensor, max_shift: int, rng: torch.Generator) -> torch.Tensor:
    shifts = torch.randint(-max_shift, max_shift + 1, (len(batch), 2), generator=rng).tolist()
    return torch.stack([image.roll(shift, dims=(1, 2)) for image, shift in zip(batch, shifts)])


def digit_split(recipe: ClassifierRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, held-out) digit indices: a seeded permutation, since the file is sorted by label."""
    order = torch.randperm(len(mnist_digits()[1]), generator=torch.Generator().manual_seed(recipe.seed))
    return order[: recipe.train_digits], order[recipe.train_digits:]


def train_classifier(recipe: ClassifierRecipe = ClassifierRecipe()) -> tuple[DigitClassifier, float]:
    """Train on the recipe's 4,000 digits; return the classifier (eval mode) and its held-out accuracy."""
    digits, labels = mnist_digits()
    inputs = _as_input(digits)
    train, held_out = digit_split(recipe)
    rng = torch.Generator().manual_seed(recipe.seed)
    with torch.random.fork_rng():  # dropout and the init draw from the global generator: leave the caller's
        torch.manual_seed(recipe.seed)
        classifier = DigitClassifier(recipe)
        optimizer = torch.optim.Adam(classifier.parameters(), recipe.lr)
        steps_per_epoch = len(train) // recipe.batch_size
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
        for _ in range(recipe.epochs):
            order = train[torch.randperm(len(train), generator=rng)]
            for batch in order[: steps_per_epoch * recipe.batch_size].split(recipe.batch_size):
                loss = F.cross_entropy(classifier(_shifted(inputs[batch], recipe.max_shift, rng)), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    classifier.eval().requires_grad_(False)
    accuracy = (classifier(inputs[held_out]).argmax(1) == labels[held_out]).double().mean().item()
    return classifier, accuracy


def load_classifier(cache_dir: Path | None = None, recipe: ClassifierRecipe = ClassifierRecipe()) -> DigitClassifier:
    """The recipe's classifier from `cache_dir` (default_cache_dir()); trained and cached when absent.
    Raises ClassifierUnfit when a training falls short of 97% on its held-out digits."""
    path = Path(cache_dir or default_cache_dir()).expanduser() / f"digit-classifier-{recipe.key()}.safetensors"
    classifier = DigitClassifier(recipe)
    try:
        classifier.load_state_dict(load_file(path))
        return classifier.eval().requires_grad_(False)
    except (FileNotFoundError, SafetensorError, OSError, RuntimeError):  # absent, torn or foreign: train anew
        pass
    classifier, accuracy = train_classifier(recipe)
    print(f"stacked-mnist: digit classifier held-out accuracy {accuracy:.2%} on {5000 - recipe.train_digits} digits", flush=True)
    if accuracy < MIN_ACCURACY:
        raise ClassifierUnfit(
            f"stacked-mnist: the digit classifier reached {accuracy:.2%} on its held-out digits, below the"
            f" {MIN_ACCURACY:.0%} its mode counts need; report this with your torch version"
        )
    try:  # readers see no file or the whole one
        state = {k: v.contiguous() for k, v in classifier.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"accuracy": f"{accuracy:.4f}", **_recipe_strings(recipe)}))
    except OSError as error:
        print(f"warning: stacked-mnist: cannot cache the digit classifier in {path} ({error}); it will be trained again next time")
    return classifier


def _recipe_strings(recipe: ClassifierRecipe) -> dict[str, str]:
    return {k: str(v) for k, v in dataclasses.asdict(recipe).items()}


@dataclass(frozen=True)
class Reference:
    """The real distribution's feature statistics (float64): mean (3d,) and covariance (3d, 3d)."""

    mean: torch.Tensor
    covariance: torch.Tensor


@torch.no_grad()
def reference_statistics(classifier: DigitClassifier) -> Reference:
    """Exact statistics of real stacked samples' features: three independent uniform draws of the
    5,000 digits, so the digits' mean three times and their covariance on the diagonal blocks."""
    features = classifier.features(_as_input(mnist_digits()[0])).double()
    mean = features.mean(0)
    covariance = torch.cov(features.T, correction=0)
    return Reference(mean.repeat(CHANNELS), torch.block_diag(*[covariance] * CHANNELS))


@torch.no_grad()
def classify(samples: torch.Tensor, classifier: DigitClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    """(modes (N,) in 0..999, features (N, 3d) float64) of images (N, 3, 32, 32): uint8, or floats in [-1, 1]."""
    modes, features = [], []
    for chunk in samples.split(SCORE_CHUNK):
        # Floats take the path a written sample takes (to uint8 and back): the same image, the same score.
        digits = _as_input((chunk if chunk.dtype == torch.uint8 else to_uint8(chunk)).flatten(0, 1).cpu())
        per_digit = classifier.features(digits)
        labels = classifier.head(per_digit).argmax(1).view(-1, CHANNELS)
        modes.append(labels[:, 0] * CLASSES**2 + labels[:, 1] * CLASSES + labels[:, 2])
        features.append(per_digit.double().view(len(chunk), -1))
    return torch.cat(modes), torch.cat(features)


def mode_scores(modes: torch.Tensor) -> dict[str, float]:
    """{"modes": modes with at least one sample, "kl": KL(histogram || uniform over 1,000) in nats}."""
    counts = torch.bincount(modes.flatten().long(), minlength=MODES).double()
    p = counts[counts > 0] / counts.sum()
    return {"modes": float(len(p)), "kl": (p * (p * MODES).log()).sum().item()}


def frechet_distance(features: torch.Tensor, reference: Reference) -> float:
    """||mu - mu_r||^2 + tr(S + S_r - 2 (S S_r)^(1/2)), in float64; tr of the root as the sum of the
    square roots of the eigenvalues of S S_r (real and >= 0 in exact arithmetic: clamped)."""
    features = features.double()
    mean, covariance = features.mean(0), torch.cov(features.T, correction=1) if len(features) > 1 else torch.zeros_like(reference.covariance)
    root_trace = torch.linalg.eigvals(covariance @ reference.covariance).real.clamp(min=0).sqrt().sum()
    distance = (mean - reference.mean).square().sum() + covariance.trace() + reference.covariance.trace() - 2 * root_trace
    return distance.item()


def score(samples: torch.Tensor, classifier: DigitClassifier, reference: Reference | None = None) -> dict[str, float]:
    """{"modes", "kl", "frechet"} of images (N, 3, 32, 32), uint8 or floats in [-1, 1]."""
    modes, features = classify(samples, classifier)
    return _scores(modes, features, reference or reference_statistics(classifier))


def _scores(modes: torch.Tensor, features: torch.Tensor, reference: Reference) -> dict[str, float]:
    return {**mode_scores(modes), "frechet": frechet_distance(features, reference)}


def real_floor(
    classifier: DigitClassifier, num_samples: int = REAL_FLOOR_SAMPLES, reference: Reference | None = None
) -> dict[str, float]:
    """The scores of `num_samples` real stacked samples: what a perfect generator would get."""
    rng = torch.Generator().manual_seed(REAL_SEED)
    modes, features = [], []
    for first in range(0, num_samples, SCORE_CHUNK):
        chunk_modes, chunk_features = classify(stacked_images(stacked_indices(min(SCORE_CHUNK, num_samples - first), rng)), classifier)
        modes.append(chunk_modes)
        features.append(chunk_features)
    return _scores(torch.cat(modes), torch.cat(features), reference or reference_statistics(classifier))


@torch.no_grad()
def classify_generated(
    generator: nn.Module, latent_dim: int, classifier: DigitClassifier, share: range, batch_size: int, seed: int,
    device: torch.device = torch.device("cpu"),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(modes, features) of the generator's samples `share` (FID's seeded blocks of `batch_size`),
    as classify gives them; the caller's RNG states are left as they were."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        blocks = [classify(images, classifier) for images in generated_blocks(generator, latent_dim, share, batch_size, seed, device)]
    if not blocks:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, CHANNELS * classifier.num_features, dtype=torch.float64)
    return torch.cat([m for m, _ in blocks]), torch.cat([f for _, f in blocks])


def score_generator(
    generator: nn.Module, latent_dim: int, classifier: DigitClassifier, reference: Reference, *, num_samples: int, batch_size: int, seed: int
) -> dict[str, float]:
    """{"modes", "kl", "frechet"} of `num_samples` samples on one process: the samples, and so the
    numbers, that `train/evaluate.py --samples N` gives a run with this batch size and seed."""
    modes, features = classify_generated(generator, latent_dim, classifier, range(num_samples), batch_size, seed)
    return _scores(modes, features, reference)


class StackedMNISTEvaluator:
    """Modes, KL and Fréchet distance of a generator's `num_samples` samples; FIDEvaluator's shape.

    Collective: each rank generates and classifies its share (FID's seeded blocks, so the samples are
    the same whatever the number of processes), the modes and features are gathered in sample order
    on every rank, and every rank computes the same numbers. The classifier is trained (when not
    cached) by the main process first, then loaded from the cache by the others."""

    def __init__(self, accelerator: "Accelerator", *, num_samples: int, batch_size: int, seed: int, cache_dir: Path | None = None):
        if num_samples < 2:
            raise ValueError(f"--samples {num_samples}: the Fréchet distance needs at least 2 samples (26000 for PacGAN's numbers)")
        self.accelerator = accelerator
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        unfit = None
        with accelerator.main_process_first():
            try:
                self.classifier = load_classifier(cache_dir)
            except ClassifierUnfit as error:  # raised past the barrier, where the other ranks wait for this one
                unfit = error
        if unfit is not None:
            raise unfit
        self.reference = reference_statistics(self.classifier)

    @torch.no_grad()
    def evaluate(self, generator: nn.Module, latent_dim: int) -> dict[str, float]:
        """{"modes", "kl", "frechet"} of `generator` (the EMA's); every rank calls it and gets the same
        numbers. The caller's RNG states are left as they were."""
        accelerator = self.accelerator
        device = accelerator.device
        share = rank_share(self.num_samples, self.batch_size, accelerator.process_index, accelerator.num_processes)
        modes, features = classify_generated(generator, latent_dim, self.classifier, share, self.batch_size, self.seed, device)
        modes = gather_shares(accelerator, modes.to(device), self.num_samples, self.batch_size).cpu()
        features = gather_shares(accelerator, features.to(device), self.num_samples, self.batch_size).cpu()
        return _scores(modes, features, self.reference)

    def real_floor(self) -> dict[str, float]:
        """The same scores for as many real samples."""
        return real_floor(self.classifier, self.num_samples, self.reference)
