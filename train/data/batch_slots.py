"""Reused shared-memory batches that DataLoader workers decode into (issue 24, item 5).

By default a worker's batch goes to its rank in new shared memory, one block a batch (what
`default_collate` does in a worker). New memory costs its first write: the kernel hands out zeroed
pages, and on this project's VM, whose memory balloon returns freed pages to the host, about 0.8 ms
a MB (README, Data pipeline). At 1024 px that is 3 MB an image: 2.4 ms, against 3.1 to decode it.

So each worker owns a few slots, batch-sized blocks of one shared allocation made by the rank
before the workers start, and decodes straight into a free one. Each slot has a state byte in
shared memory with one writer per transition: the owning worker takes a free slot, the rank frees
it once nothing reads it any more. A worker never waits: with no free slot it makes its batch in new
memory as before, so a consumer that holds on to batches costs speed, never a hang, whatever state
a shutdown or a resume finds the slots in.

When is a slot free again?
- Batches pinned by the DataLoader (a CUDA run): once pinned, which copies them; the rank frees the
  slot as the batch arrives.
- Otherwise the rank hands out the slot itself, as a tensor whose storage holds a lease: the slot
  is freed when the last tensor or view of that storage is gone (`lease`).
"""
from __future__ import annotations

import math
import weakref

import numpy as np
import torch

FREE, TAKEN = 0, 1


class BatchSlots:
    """`per_worker` slots of (batch_size, 3, resolution, resolution) uint8 for each of `workers`."""

    def __init__(self, workers: int, per_worker: int, batch_size: int, resolution: int):
        self.per_worker = per_worker
        shape = (workers * per_worker, batch_size, 3, resolution, resolution)
        # share_memory_ reserves the whole block (torch fallocates it in /dev/shm): a full /dev/shm
        # fails here, at the start, with RuntimeError, not with SIGBUS in a worker later.
        self.pixels = torch.empty(shape, dtype=torch.uint8).share_memory_()
        self.state = torch.full((len(self.pixels),), FREE, dtype=torch.uint8).share_memory_()

    @staticmethod
    def per_worker_for(prefetch_factor: int, batches_in_hand: int, workers: int) -> int:
        """Slots a worker needs never to make a batch in new memory: its prefetched batches (the one
        it fills among them) and its share of those the consumer holds at once."""
        return prefetch_factor + 1 + math.ceil(batches_in_hand / workers)

    def take(self, worker: int) -> int | None:
        """In worker `worker`: a free slot of its own, now taken, or None when all are in use."""
        state = self.state.numpy()
        first = worker * self.per_worker
        for slot in range(first, first + self.per_worker):
            if state[slot] == FREE:
                state[slot] = TAKEN
                return slot
        return None

    def rows(self, slot: int) -> np.ndarray:
        """The slot's pixels as (batch_size, 3, R, R), to decode into."""
        return self.pixels[slot].numpy()

    def free(self, slot: int) -> None:
        # A byte store follows the consumer's last read of the slot by a copy of the whole batch
        # and a Python call or more; the worker writes the slot only after it reads this byte.
        self.state.numpy()[slot] = FREE

    def lease(self, slot: int) -> torch.Tensor:
        """The slot as a tensor; the slot is freed once no tensor or view of it remains in this
        process (a batch sent on to another process would need a copy first: nothing here does)."""
        # torch.from_numpy keeps the array it is given alive as long as the storage: a new array
        # object per lease, whose end frees the slot.
        held = self.pixels[slot].numpy()[...]
        weakref.finalize(held, self.free, slot).atexit = False
        return torch.from_numpy(held)
