"""`--data prepared:DIR` read by index: this rank's rows of the memory-mapped shards, in a new
seeded order every pass, copied (and flipped) straight into the batch.

It keeps the contract of the streamed sources (streaming.py): whole shards per rank where their
count divides evenly, else every world_size-th row; a reshuffle every pass; a per-sample random
flip from a per-rank seed; exact resume (the pass and the position in it are the whole state); a
damaged shard's rows skipped and counted in data_skipped, every pass, as unreadable rows are.

Why not through `datasets` like them: pixels need no decoding and so no shuffle buffer, and every
row that passes through datasets' shuffled per-row iteration, a generator's dict and a per-row
batcher costs several times its copy. That capped a 64-px reader at 0.2 of a plain copy loop
(bench/data_throughput.py, README "Data pipeline"). Here a pass is a permutation of row numbers,
and the shuffle is a whole one, not a buffer's.

Each shard is memory-mapped and its checksum verified where a process first opens it, once (cached).
"""
import functools
import mmap
import warnings
from pathlib import Path

import numpy as np
import torch

from train.common.seeds import SeedPurpose, stream_seed
from train.data.options import DataOptions
from train.data.prepared import PreparedShardWarning, check_prepared, file_crc32
from train.data.specs import EMPTY_PASSES_LIMIT, DataError

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


def rank_rows(shard_sizes: list[int], rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """This rank's rows as (shard, row) pairs, and how they were split (for the log): the split
    shard_for_rank makes of a streamed source, so a rank reads the same share either way."""
    shard = np.repeat(np.arange(len(shard_sizes)), shard_sizes)
    row = np.concatenate([np.arange(size) for size in shard_sizes]) if shard_sizes else np.zeros(0, np.int64)
    if world_size == 1:
        return shard, row, f"{len(shard_sizes)} shard{'s' if len(shard_sizes) != 1 else ''} on one process"
    if len(shard_sizes) % world_size == 0:
        mine = shard % world_size == rank
        how = f"{len(shard_sizes)} shards over {world_size} processes"
    else:
        mine = np.arange(len(shard)) % world_size == rank
        how = f"one row in {world_size} on each process ({len(shard_sizes)} shards do not divide evenly)"
    return shard[mine], row[mine], how


# Up to 64 px a batch's flipped rows are staged and mirrored by one torch.flip (12 kB an image: the
# staged block stays in cache), larger ones one by one. Measured on the 2-core VM, images/s with
# flips: 64 px 565,000 staged against 485,000 for reversed 8-byte words and 400,000 for torch row by
# row (its per-call cost); 256 px 58,000 row by row against 40,000 staged.
STAGED_FLIP_MAX_BYTES = 3 * 64 * 64


class PreparedStream:
    """This rank's endless, resumable stream of uint8 image batches from a prepared folder."""

    # Read in the rank's own process: a worker's hand-off through shared memory cost more than the
    # reading it saves (one worker through datasets: 1,400 against 29,000 images/s at 256 px).
    workers = 0

    def __init__(self, options: DataOptions, *, batch_size: int, seed: int, rank: int, world_size: int,
                 pin_memory: bool = False):
        self.spec, self.batch_size, self.hflip, self.pin_memory = options.spec, batch_size, options.hflip, pin_memory
        self.shape = (3, options.resolution, options.resolution)
        folder = Path(options.spec.name)
        shards = [shard for shard in check_prepared(options).shards if shard.images]
        self.files = [(str(folder / shard.file), shard.images, shard.crc32) for shard in shards]
        self.shard_of, self.row_of, how = rank_rows([shard.images for shard in shards], rank, world_size)
        if not len(self.shard_of):
            raise DataError(f"--data {self.spec}: its {sum(shard.images for shard in shards)} images leave process {rank}"
                            f" of {world_size} none; train on fewer processes, or prepare more images")
        self.seed = stream_seed(seed, rank, SeedPurpose.DATA_PREPARED)
        if rank == 0:
            print(f"data {self.spec}: {how}, read in the process (prepared pixels)", flush=True)
        self.split_description = how
        self.epoch, self.position = 0, 0
        self.read = self.skipped = 0
        self._pass: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the pass's shards, rows and flips, in order
        self._pixels: list[np.ndarray | None] | None = None  # each shard mapped, None where it failed its check
        staged = self.hflip and np.prod(self.shape) <= STAGED_FLIP_MAX_BYTES
        self._staging = np.empty((batch_size, *self.shape), np.uint8) if staged else None

    def __iter__(self) -> "PreparedStream":
        return self

    def __next__(self) -> torch.Tensor:
        batch = torch.empty((self.batch_size, *self.shape), dtype=torch.uint8, pin_memory=self.pin_memory)
        filled, empty_passes, staged = 0, 0, []
        while filled < self.batch_size:
            if self._pass is None:
                empty_passes = 0 if self._begin_pass() else empty_passes + 1
                if empty_passes == EMPTY_PASSES_LIMIT:
                    raise DataError(
                        f"--data {self.spec}: every shard of this process's share failed its check ({self.skipped} rows"
                        " skipped, named in the warnings above); restore those files, or prepare the data again"
                    )
            take = min(self.batch_size - filled, len(self._pass[0]) - self.position)
            self._copy(batch, filled, take, staged)
            filled, self.position, self.read = filled + take, self.position + take, self.read + take
            if self.position == len(self._pass[0]):
                self._pass, self.epoch, self.position = None, self.epoch + 1, 0
        if staged:
            batch.numpy()[staged] = torch.from_numpy(self._staging[: len(staged)]).flip(-1).numpy()
        return batch

    def _copy(self, batch: torch.Tensor, first: int, count: int, staged: list[int]) -> None:
        """Rows position..position+count of the pass into batch[first:first + count]; a flipped row
        mirrored there, or (small images) staged for one flip of the batch's staged rows."""
        shards, rows, flips = (part[self.position : self.position + count].tolist() for part in self._pass)
        out, pixels, staging = batch.numpy(), self._pixels, self._staging
        for i, shard, row, flip in zip(range(first, first + count), shards, rows, flips):
            if not flip:
                out[i] = pixels[shard][row]
            elif staging is not None:
                staging[len(staged)] = pixels[shard][row]
                staged.append(i)
            else:
                batch[i].copy_(torch.from_numpy(pixels[shard][row]).flip(-1))

    def _begin_pass(self) -> int:
        """Open the rank's shards (verified once per process), draw this pass's order and flips, and
        count a damaged shard's rows as read and skipped once for it. Returns the readable rows."""
        if self._pixels is None:
            self._pixels = [_verified(*file) for file in self.files]
        readable = np.flatnonzero(np.array([pixels is not None for pixels in self._pixels])[self.shard_of])
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(readable)
        flips = rng.random(len(order)) < 0.5 if self.hflip else np.zeros(len(order), bool)
        self._pass = (self.shard_of[order], self.row_of[order], flips)
        if self.position == 0:  # a resumed pass has counted them already
            unreadable = len(self.shard_of) - len(readable)
            self.read, self.skipped = self.read + unreadable, self.skipped + unreadable
        self.position = min(self.position, len(order))  # a shard damaged since the checkpoint: fewer rows
        return len(readable)

    def counters(self) -> dict[str, int]:
        return {"data_read": self.read, "data_skipped": self.skipped}

    def close(self) -> None:
        self._pass = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "read": self.read, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        if "position" not in state:  # saved by the reader before this one (through datasets)
            warnings.warn(f"--data {self.spec}: the checkpoint's data position is from an older reader; this rank"
                          " starts its share from a new pass", stacklevel=2)
            self.read, self.skipped = int(state["read"]), int(state["skipped"])
            self.epoch, self.position, self._pass = 0, 0, None
            return
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.read, self.skipped = int(state["read"]), int(state["skipped"])
        self._pass = None
