"""Data sources behind one interface: each rank gets an endless, resumable stream of batches.

A `--data` spec names the source: `synthetic`, `toy:8gaussians`, `toy:25gaussians`, or a folder
path; `hf:<dataset-id>` and `parquet:<glob>` are reserved for the streaming `datasets` loader.
Streams yield CPU tensors: uint8 images (N, 3, H, W) or float32 points (N, 2); `to_model_input`
turns them into model inputs on the device. Sharding and decoding stay in this module.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
TOY_DATASETS = {
    # WGAN-GP paper Fig. 1 / PacGAN and VEEGAN benchmarks: (mode centres, standard deviation)
    "8gaussians": (
        [(2 * math.cos(2 * math.pi * k / 8), 2 * math.sin(2 * math.pi * k / 8)) for k in range(8)],
        0.02,
    ),
    "25gaussians": ([(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)], 0.05),
}
STREAMING_KINDS = ("hf", "parquet")


class DataSpecError(ValueError):
    """A --data value that cannot be read; the message names it and says what to do."""


@dataclass(frozen=True)
class DataSpec:
    kind: str  # "synthetic" | "toy" | "folder" | "hf" | "parquet"
    name: str  # toy dataset name, folder path, hub id or glob

    @property
    def is_points(self) -> bool:
        return self.kind == "toy"


def parse_data_spec(spec: str) -> DataSpec:
    if spec == "synthetic":
        return DataSpec("synthetic", "synthetic")
    kind, sep, name = spec.partition(":")
    if sep and kind == "toy":
        if name not in TOY_DATASETS:
            raise DataSpecError(f"--data {spec}: unknown toy dataset; choose toy:{' or toy:'.join(TOY_DATASETS)}")
        return DataSpec("toy", name)
    if sep and kind in STREAMING_KINDS:
        raise DataSpecError(
            f"--data {spec}: the {kind}: source needs the streaming datasets loader, which this version does"
            " not include yet; train from an image folder (--data path/to/images) or --data synthetic"
        )
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise DataSpecError(
            f"--data {spec}: no such folder; pass a folder of images, synthetic, or toy:8gaussians / toy:25gaussians"
        )
    if not _image_files(folder):
        raise DataSpecError(
            f"--data {spec}: the folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); point it at a folder of images"
        )
    return DataSpec("folder", str(folder))


def toy_modes(name: str) -> tuple[torch.Tensor, float]:
    centres, std = TOY_DATASETS[name]
    return torch.tensor(centres, dtype=torch.float32), std


class BatchStream(Protocol):
    def __next__(self) -> torch.Tensor: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def stream_seed(seed: int, rank: int, purpose: int) -> int:
    """Independent, reproducible seeds per (run seed, rank, purpose): no two streams share a sequence."""
    return int(np.random.SeedSequence([seed, rank, purpose]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _GeneratedStream:
    """A stream drawn from a per-rank torch.Generator; its state is the generator state."""

    def __init__(self, seed: int):
        self.rng = torch.Generator().manual_seed(seed)

    def __iter__(self) -> "_GeneratedStream":
        return self

    def state_dict(self) -> dict:
        return {"rng": self.rng.get_state()}

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


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """Short side resized to `resolution`, centre-cropped square, as uint8 (3, H, W)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = resolution / min(image.size)
        size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


class _ImageFiles(Dataset):
    def __init__(self, files: list[Path], resolution: int):
        self.files, self.resolution = files, resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(self.files[index], self.resolution)


class _RankSlice(Sampler[int]):
    """This rank's part of one epoch's permutation, from a given offset (for resume)."""

    def __init__(self, order: list[int], start: int):
        self.order, self.start = order, start

    def __iter__(self) -> Iterator[int]:
        return iter(self.order[self.start :])

    def __len__(self) -> int:
        return len(self.order) - self.start


class FolderStream:
    """Images from a folder, reshuffled every epoch with the same permutation on every rank,
    each rank taking a disjoint, equal-sized slice (the remainder is dropped that epoch)."""

    def __init__(self, folder: str, resolution: int, batch_size: int, seed: int, rank: int, world_size: int, workers: int):
        self.files = _image_files(Path(folder))
        if len(self.files) < batch_size * world_size:
            raise DataSpecError(
                f"--data {folder}: {len(self.files)} images cannot fill one batch of {batch_size} on each of"
                f" {world_size} processes; add images or lower --batch-size"
            )
        self.dataset = _ImageFiles(self.files, resolution)
        self.batch_size, self.seed, self.rank, self.world_size, self.workers = batch_size, seed, rank, world_size, workers
        self.epoch, self.batches_done = 0, 0
        self._batches: Iterator[torch.Tensor] | None = None

    def _epoch_order(self) -> list[int]:
        permutation = torch.randperm(len(self.files), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        per_rank = len(self.files) // self.world_size // self.batch_size * self.batch_size
        return permutation[self.rank :: self.world_size][:per_rank].tolist()

    def _start_epoch(self) -> None:
        sampler = _RankSlice(self._epoch_order(), self.batches_done * self.batch_size)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.workers,
            persistent_workers=False,
            drop_last=True,
        )
        self._batches = iter(loader)

    def __iter__(self) -> "FolderStream":
        return self

    def __next__(self) -> torch.Tensor:
        if self._batches is None:
            self._start_epoch()
        try:
            batch = next(self._batches)
        except StopIteration:
            self.epoch, self.batches_done = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._batches)
        self.batches_done += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])
        self._batches = None


def open_stream(
    spec: DataSpec, *, resolution: int, batch_size: int, seed: int, rank: int, world_size: int, workers: int = 0
) -> BatchStream:
    """This rank's endless stream of batches of `batch_size`."""
    if spec.kind == "toy":
        return ToyStream(spec.name, batch_size, stream_seed(seed, rank, 1))
    if spec.kind == "synthetic":
        return SyntheticImageStream(resolution, batch_size, stream_seed(seed, rank, 1))
    if spec.kind == "folder":
        return FolderStream(spec.name, resolution, batch_size, seed, rank, world_size, workers)
    raise DataSpecError(f"--data: no stream for source kind {spec.kind!r}")


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] on the device (normalised there, after the cheap copy)."""
    batch = batch.to(device, non_blocking=True)
    if batch.dtype == torch.uint8:
        return batch.float().div_(127.5).sub_(1.0)
    return batch
