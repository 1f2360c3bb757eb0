"""Streams drawn from a per-rank generator: 2-D toy mixtures and synthetic images (no download)."""
import math

import torch

TOY_DATASETS = {
    # WGAN-GP paper Fig. 1 / PacGAN and VEEGAN benchmarks: (mode centres, standard deviation)
    "8gaussians": (
        [(2 * math.cos(2 * math.pi * k / 8), 2 * math.sin(2 * math.pi * k / 8)) for k in range(8)],
        0.02,
    ),
    "25gaussians": ([(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)], 0.05),
}


def toy_modes(name: str) -> tuple[torch.Tensor, float]:
    centres, std = TOY_DATASETS[name]
    return torch.tensor(centres, dtype=torch.float32), std


class _GeneratedStream:
    """A stream drawn from a per-rank torch.Generator; its state is the generator state."""

    workers = 0  # drawn in the calling process

    def __init__(self, seed: int):
        self.rng = torch.Generator().manual_seed(seed)

    def __iter__(self) -> "_GeneratedStream":
        return self

    def state_dict(self) -> dict:
        return {"rng": self.rng.get_state()}

    def counters(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        """Nothing to release: drawn in the calling process."""

    def load_state_dict(self, state: dict) -> None:
        self.rng.set_state(state["rng"])


class ToyStream(_GeneratedStream):
    """Mixture of isotropic Gaussians, in data coordinates."""

    def __init__(self, name: str, batch_size: int, seed: int):
        super().__init__(seed)
        self.centres, self.std = toy_modes(name)
        self.batch_size = batch_size

    def __next__(self) -> torch.Tensor:
        modes = torch.randint(len(self.centres), (self.batch_size,), generator=self.rng)
        noise = torch.randn(self.batch_size, 2, generator=self.rng)
        return self.centres[modes] + self.std * noise


class SyntheticImageStream(_GeneratedStream):
    """Smooth random colour fields: images with structure a GAN can learn, made without any download."""

    def __init__(self, resolution: int, batch_size: int, seed: int):
        super().__init__(seed)
        self.resolution = resolution
        self.batch_size = batch_size

    def __next__(self) -> torch.Tensor:
        coarse = torch.rand(self.batch_size, 3, 4, 4, generator=self.rng)
        images = torch.nn.functional.interpolate(coarse, size=self.resolution, mode="bicubic", align_corners=False)
        return (images.clamp(0, 1) * 255).round().to(torch.uint8)
