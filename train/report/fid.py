"""FID and KID of the EMA generator: torchmetrics' metrics on torch-fidelity's Inception features.

Both metrics read one feature pass: each rank extracts features for its share of the samples, the
shares are gathered in sample order, and every rank computes the same numbers from them. The real
features are computed once per data source, split, resolution, crop, sample count and extractor,
and cached on disk for every later evaluation and run.
"""
import hashlib
import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from train.common.atomic import atomic_write
from train.common.seeds import SeedPurpose, stream_seed
from train.data import DataOptions, open_stream

if TYPE_CHECKING:
    from accelerate import Accelerator

# torchmetrics and torch-fidelity are imported where used: they pull in torchvision and dynamo,
# seconds at every start-up, which only runs with FID on should pay.
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
URL_INCEPTION_V3 = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"
# Bińkowski et al. (2018), as torch-fidelity and StyleGAN-ADA: 100 subsets of 1000 samples.
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
# The real images are a function of the cache key alone, never of the run's seed.
REAL_SEED = 0


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "facegan" / "fid"


class FIDUnavailable(RuntimeError):
    """The Inception weights are missing or unreadable; the message names the file, its URL and --fid-weights."""


class FIDNotApplicable(ValueError):
    """FID compares image features: a run on 2-D toy points has none."""


def inception_weights_file(weights_path: str | None) -> Path:
    """The weights file to load: `weights_path`, else torch-fidelity's download cache (torch.hub's
    checkpoints folder, where `load_state_dict_from_url` puts it). Never downloads: on a cluster
    without internet the download would hang or fail deep inside a long run."""
    fetch = f"fetch {URL_INCEPTION_V3} where there is internet"
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FIDUnavailable(f"--fid-weights {weights_path}: no such file; {fetch} and pass its path to --fid-weights")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if not cached.is_file():
        raise FIDUnavailable(
            f"FID needs torch-fidelity's Inception weights {INCEPTION_WEIGHTS}, and they are not in {cached.parent}"
            f" (no download is tried); {fetch} and pass --fid-weights PATH, or put the file in {cached.parent}"
        )
    return cached


def inception_extractor(weights_path: str | None, feature_size: int = 2048) -> nn.Module:
    """torch-fidelity's Inception-v3 (the TF FID weights) as a module from uint8 images (N, 3, H, W)
    to `feature_size` features; raises FIDUnavailable before any compute when the weights are missing."""
    if feature_size not in (64, 192, 768, 2048):
        raise ValueError(f"Inception features come in sizes 64, 192, 768 and 2048, not {feature_size}")
    path = inception_weights_file(weights_path)
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        # torch-fidelity unpickles the file with weights_only=False: let only a plain state dict reach it.
        torch.load(path, map_location="cpu", weights_only=True)
        # antialias=False: torch-fidelity's TF1-compatible bilinear resize to 299 px, the resize of the
        # original TF FID code. torchmetrics' default (torch's antialiased bilinear) gives other
        # features, so FIDs that do not compare with published ones.
        extractor = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(feature_size)],
            feature_extractor_weights_path=str(path),
            antialias=False,
        )
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, ValueError) as error:
        raise FIDUnavailable(
            f"{path}: not torch-fidelity's Inception weights {INCEPTION_WEIGHTS} ({type(error).__name__}: {error});"
            f" fetch {URL_INCEPTION_V3} again and pass it to --fid-weights"
        ) from None
    extractor.num_features = feature_size
    return extractor


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 [0, 255]: the exact inverse of the data's to_model_input."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def rank_share(num_samples: int, block: int, rank: int, world_size: int) -> range:
    """This rank's contiguous range of sample indices, in whole blocks: the samples, their order
    and each block's seed are the same whatever the number of processes."""
    blocks = -(-num_samples // block)
    first, last = blocks * rank // world_size, blocks * (rank + 1) // world_size
    return range(min(first * block, num_samples), min(last * block, num_samples))


def generated_blocks(
    generator: nn.Module, latent_dim: int, share: range, batch_size: int, seed: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """uint8 samples of `share` (a rank_share), one block of `batch_size` per forward, in eval mode.

    Each block is seeded by its index: latents and any noise the generator draws inside (torch's
    global generator) do not depend on the number of ranks."""
    was_training = generator.training
    generator.eval()
    try:
        for first in range(share.start, share.stop, batch_size):
            block = first // batch_size
            count = min(batch_size, share.stop - first)
            latents = torch.Generator().manual_seed(stream_seed(seed, block, SeedPurpose.FID_LATENTS))
            z = torch.randn(count, latent_dim, generator=latents)
            torch.manual_seed(stream_seed(seed, block, SeedPurpose.FID_NOISE))
            yield to_uint8(generator(z.to(device)))
    finally:
        generator.train(was_training)


def gather_shares(accelerator: "Accelerator", rows: torch.Tensor, num_samples: int, block: int) -> torch.Tensor:
    """Every rank's rows (N_rank, ...) of its rank_share, in sample order, on every rank."""
    world = accelerator.num_processes
    if world == 1:
        return rows
    counts = [len(rank_share(num_samples, block, rank, world)) for rank in range(world)]
    padded = rows.new_zeros(max(counts), *rows.shape[1:])
    padded[: len(rows)] = rows
    gathered = accelerator.gather(padded).split(max(counts))
    return torch.cat([part[:count] for part, count in zip(gathered, counts)])


class _Precomputed(nn.Module):
    """The metrics' `feature` network when features are extracted once for both of them."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _num_features(extractor: nn.Module, resolution: int) -> int:
    # torchmetrics' rule for custom networks: a `num_features` attribute, else one dummy forward.
    if hasattr(extractor, "num_features"):
        return int(extractor.num_features)
    with torch.no_grad():
        return extractor(torch.zeros(1, 3, resolution, resolution, dtype=torch.uint8)).shape[-1]


def _extractor_identity(extractor: nn.Module, num_features: int) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(extractor.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    resize = "-tf1-resize" if getattr(extractor, "use_antialias", True) is False else ""
    return f"{type(extractor).__name__}-{num_features}{resize}-{digest.hexdigest()[:12]}"


class FIDEvaluator:
    """FID and KID of a generator against `num_samples` real images of the run's data source.

    `feature` is an Inception feature size (the weights from `weights_path` or torch.hub's cache), or
    any module from uint8 images (N, 3, resolution, resolution) to (N, d) features. The generated set
    is fixed by `seed`, `num_samples` and `batch_size`, whatever the number of processes.
    """

    def __init__(
        self,
        accelerator: "Accelerator",
        data: DataOptions,
        *,
        num_samples: int,
        batch_size: int,
        cache_dir: Path,
        seed: int,
        feature: nn.Module | int = 2048,
        weights_path: str | None = None,
    ):
        if data.spec.is_points:
            raise FIDNotApplicable(
                f"--data {data.spec}: FID and KID compare Inception features of images, and this run's data are 2-D"
                " points; judge toy runs by their sample plots over the true modes"
            )
        if num_samples < 4:
            raise ValueError(f"--fid-samples {num_samples}: FID and KID need at least 4 samples (10000+ for stable numbers)")
        self.accelerator = accelerator
        self.data = data.reference()
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        extractor = inception_extractor(weights_path, feature) if isinstance(feature, int) else feature
        self.num_features = num_features = _num_features(extractor, data.resolution)
        self.cache_file, self.cache_key = self._cache_entry(Path(cache_dir), _extractor_identity(extractor, num_features))
        self.extractor = extractor.to(accelerator.device).eval()
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        # The metrics see features, not images: one Inception pass serves both (and KID would
        # otherwise build a second Inception, downloading its weights). Every rank holds the gathered
        # features, so no metric syncs on compute.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self.kid = KernelInceptionDistance(
                feature=_Precomputed(num_features),
                subsets=KID_SUBSETS,
                subset_size=KID_SUBSET_SIZE if num_samples >= KID_SUBSET_SIZE else num_samples // 2,
                reset_real_features=False,
                sync_on_compute=False,
            ).to(accelerator.device)
        self.fid = FrechetInceptionDistance(
            feature=_Precomputed(num_features), reset_real_features=False, sync_on_compute=False
        ).to(accelerator.device)
        self._has_real = False

    def _cache_entry(self, cache_dir: Path, extractor: str) -> tuple[Path, dict[str, str]]:
        key = {**self.data.identity(), "num_samples": str(self.num_samples), "extractor": extractor}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", str(self.data.spec)).strip("_")[-48:]
        name = f"real-{readable}-{self.data.resolution}px-{self.num_samples}-{digest}.safetensors"
        return cache_dir / name, key

    @torch.no_grad()
    def evaluate(self, generator: nn.Module, latent_dim: int) -> dict[str, float]:
        """{"fid", "kid_mean", "kid_std"} of `generator` (the EMA's); collective: every rank calls it
        and gets the same numbers. The caller's RNG states are left as they were."""
        device = self.accelerator.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if not self._has_real:
                real = self._real_features()
                self.fid.update(real, real=True)
                self.kid.update(real, real=True)
                self._has_real = True
            fake = self._gather(self._features(self._fake_batches(generator, latent_dim)))
            self.fid.reset()
            self.kid.reset()
            self.fid.update(fake, real=False)
            self.kid.update(fake, real=False)
            fid = self.fid.compute()
            torch.manual_seed(self.seed)  # KID's random subsets: the same on every rank
            kid_mean, kid_std = self.kid.compute()
        return {"fid": float(fid), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}

    def _share(self, rank: int | None = None) -> range:
        rank = self.accelerator.process_index if rank is None else rank
        return rank_share(self.num_samples, self.batch_size, rank, self.accelerator.num_processes)

    def _features(self, batches: Iterator[torch.Tensor]) -> torch.Tensor:
        device = self.accelerator.device
        features = [self.extractor(batch.to(device)).float() for batch in batches]
        if not features:  # fewer blocks than ranks: this one has no share
            return torch.zeros(0, self.num_features, device=device)
        return torch.cat(features)

    def _gather(self, features: torch.Tensor) -> torch.Tensor:
        """Every rank's features, in sample order, on every rank."""
        return gather_shares(self.accelerator, features, self.num_samples, self.batch_size)

    def _fake_batches(self, generator: nn.Module, latent_dim: int) -> Iterator[torch.Tensor]:
        return generated_blocks(generator, latent_dim, self._share(), self.batch_size, self.seed, self.accelerator.device)

    def _real_batches(self) -> Iterator[torch.Tensor]:
        remaining = len(self._share())
        if not remaining:
            return
        stream = open_stream(
            self.data,
            batch_size=self.batch_size,
            seed=REAL_SEED,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
        )
        while remaining > 0:
            batch = next(stream)[:remaining]
            remaining -= len(batch)
            yield batch

    def _real_features(self) -> torch.Tensor:
        cached = self._read_cache()
        # Every rank must take the same branch (the other is collective): use the cache only if all can.
        usable = torch.tensor(int(cached is not None), device=self.accelerator.device)
        if int(self.accelerator.reduce(usable, reduction="sum")) == self.accelerator.num_processes:
            if self.accelerator.is_main_process:
                print(f"fid: real statistics from {self.cache_file}")
            return cached.to(self.accelerator.device)
        features = self._gather(self._features(self._real_batches()))
        if self.accelerator.is_main_process:
            self._write_cache(features)
        return features

    def _read_cache(self) -> torch.Tensor | None:
        if not self.cache_file.is_file():
            return None
        try:
            with safe_open(self.cache_file, framework="pt") as f:
                if f.metadata() != self.cache_key:
                    return None
                features = f.get_tensor("real_features")
        except (SafetensorError, OSError):  # truncated or foreign file: recompute and overwrite
            return None
        return features if features.shape == (self.num_samples, self.num_features) else None

    def _write_cache(self, features: torch.Tensor) -> None:
        try:  # readers see the old file or the whole new one
            atomic_write(self.cache_file, lambda tmp: save_file({"real_features": features.cpu().contiguous()}, tmp, metadata=self.cache_key))
        except OSError as error:
            print(f"warning: fid: cannot cache the real statistics in {self.cache_file} ({error}); they will be recomputed next time")
            return
        print(f"fid: real statistics of {self.data.spec} ({self.num_samples} images) cached in {self.cache_file}")
