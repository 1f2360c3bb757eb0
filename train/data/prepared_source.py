"""`--data prepared:DIR` as a `datasets` source, so that it goes through the streaming pipeline of
the other sources (streaming.py): per-rank split by whole shards, the same shuffle, exact resume.

Each prepared shard is one shard of the source. It is memory-mapped and its checksum verified where
a process first opens it (on resume too); a shard that fails either way yields its rows as unreadable ones, which
the rank counts in data_skipped, and check_skipped stops the run past its limit, as for a corrupt
image of any other source.
"""
import functools
import mmap
import warnings
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import torch

from train.data.options import DataOptions
from train.data.prepared import PIXELS, PreparedShardWarning, check_prepared, file_crc32
from train.data.streaming import DecodedBatches


def prepared_source(options: DataOptions) -> datasets.IterableDataset:
    """The rows of a finished preparation made with these options' decoding flags (refused otherwise)."""
    folder = Path(options.spec.name)
    manifest = check_prepared(options)
    shards = [(str(folder / shard.file), shard.images, shard.crc32) for shard in manifest.shards if shard.images]
    return datasets.IterableDataset.from_generator(_rows, gen_kwargs={"shards": shards})


def _rows(shards: list[tuple[str, int, str]]) -> Iterator[dict]:
    for path, images, crc32 in shards:
        pixels = _verified(path, images, crc32)
        if pixels is None:
            yield from ({PIXELS: None} for _ in range(images))
            continue
        for row in range(images):
            yield {PIXELS: pixels[row]}


@functools.lru_cache(maxsize=None)
def _verified(path: str, images: int, crc32: str) -> np.ndarray | None:
    """The shard's pixels, memory-mapped, if its checksum and shape are those recorded; else None,
    said in a warning that names the shard. Once per process and shard (cached): every later pass
    reads the same mapping, with no checksum and no page faults to pay again."""
    try:
        found = file_crc32(Path(path))
        if found != crc32:
            raise ValueError(f"checksum {found}, the manifest records {crc32}")
        pixels = np.load(path, mmap_mode="r")
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or len(pixels) != images:
            raise ValueError(f"holds {pixels.dtype} {pixels.shape}, not {images} uint8 images")
        with open(path, "rb") as f:
            # A private (copy-on-write) mapping as a plain ndarray: torch takes writable arrays
            # without a warning, and np.memmap's per-row __getitem__ cost a third of a 64-px row.
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return np.frombuffer(mapped, np.uint8, pixels.size, pixels.offset).reshape(pixels.shape)
    except Exception as error:
        warnings.warn(f"skipped the {images} images of {path}: {error} (counted in data_skipped; prepare"
                      " the data again, or restore the file)", PreparedShardWarning, stacklevel=1)
        return None


class PreparedBatches(DecodedBatches):
    """DecodedBatches whose rows are pixels already: nothing to decode, only the flip and the stack."""

    def _decoded(self, cell: np.ndarray | None) -> torch.Tensor | None:
        return None if cell is None else torch.from_numpy(cell)
