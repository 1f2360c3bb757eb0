"""Per-rank random streams: one seed per (run seed, rank or block, purpose), no two streams alike.

The purposes' numbers are part of every saved run: changing one changes what a resumed run draws.
"""
from enum import IntEnum

import numpy as np


class SeedPurpose(IntEnum):
    LATENTS = 0  # the loop's training latents, per rank
    DATA = 1  # generated data streams (toy points, synthetic images), per rank
    TORCH_GLOBAL = 2  # torch's global generator after the networks are built (injected noise, dropout)
    FID_LATENTS = 3  # FID's generated set, per block of samples (not per rank)
    FID_NOISE = 4  # noise the generator draws inside while making FID's set, per block
    DATA_PREPARED = 5  # the order and flips of each pass over a prepared folder, per rank
    DATA_WORKER = 100  # horizontal flips in streaming DataLoader workers: 100 + the worker's id


def stream_seed(seed: int, rank: int, purpose: int) -> int:
    """Independent, reproducible seeds per (run seed, rank, purpose): no two streams share a sequence."""
    return int(np.random.SeedSequence([seed, rank, int(purpose)]).generate_state(1, dtype=np.uint64)[0] >> 1)
