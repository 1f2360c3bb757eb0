"""Data sources behind one interface: each rank gets an endless, resumable stream of batches.

A `--data` spec names the source: `synthetic`, `stacked-mnist`, `toy:8gaussians`, `toy:25gaussians`, a folder of
images, `hf:<dataset-id>`, `parquet:<glob>` or `prepared:<dir>` (pixels decoded once by
`python -m train.data prepare`); hub, parquet and folders share one `datasets` streaming pipeline (streaming.py), and
prepared pixels are read by index (prepared_stream.py) with the same per-rank split, reshuffle and exact resume.
Streams yield CPU tensors: uint8 images (N, 3, H, W) or float32 points
(N, 2); `to_model_input` turns them into model inputs on the device.

Importing the package imports neither torch nor datasets: `prepare`'s decoding processes import its
modules, and those two took 2.1 of the 2.4 s such a process needed to start (bench/prepare_speed.py).
The streams import them where they are built.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from train.common.seeds import SeedPurpose, stream_seed
from train.data.options import DataOptions
from train.data.specs import (
    DataError,
    DataSpec,
    DataSpecError,
    check_skipped,
    parse_data_spec,
)

__all__ = [
    "BatchStream", "DataError", "DataOptions", "DataSpec", "DataSpecError", "check_skipped", "open_stream",
    "parse_data_spec", "to_model_input",
]

if TYPE_CHECKING:
    import torch


class BatchStream(Protocol):
    workers: int  # decoding worker processes it runs beside the rank (each takes a core: train/run/threads.py)

    def __next__(self) -> torch.Tensor: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def close(self) -> None: ...  # release decoding workers; the stream is not used after


def open_stream(options: DataOptions, *, batch_size: int, seed: int, rank: int, world_size: int,
                pin_memory: bool = False, batches_in_hand: int = 1) -> BatchStream:
    """This rank's endless stream of batches of `batch_size`. Generated sources use only the
    resolution of `options`; the streamed ones (hub, parquet, folder) all of it. `batches_in_hand`:
    how many batches the caller holds at once, at most (the streamed sources' decoding workers reuse
    that many more batches' memory: train/data/batch_slots.py)."""
    spec = options.spec
    if spec.kind in ("toy", "synthetic"):
        from train.data.generated import SyntheticImageStream, ToyStream
    if spec.kind == "toy":
        return ToyStream(spec.name, batch_size, stream_seed(seed, rank, SeedPurpose.DATA))
    if spec.kind == "synthetic":
        return SyntheticImageStream(options.resolution, batch_size, stream_seed(seed, rank, SeedPurpose.DATA))
    if spec.kind == "stacked-mnist":
        from train.data.stacked_mnist import StackedMNISTStream

        return StackedMNISTStream(options.resolution, batch_size, stream_seed(seed, rank, SeedPurpose.DATA))
    if spec.kind == "prepared":
        from train.data.prepared_stream import PreparedStream

        return PreparedStream(options, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, pin_memory=pin_memory)
    # datasets and pyarrow cost seconds to import: only runs that stream encoded images pay them.
    from train.data.streaming import StreamingImages

    return StreamingImages(options, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, pin_memory=pin_memory,
                           batches_in_hand=batches_in_hand)


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] on the device (normalised there, after the cheap copy)."""
    batch = batch.to(device, non_blocking=True)
    if batch.dtype.is_floating_point:  # points
        return batch
    return batch.float().div_(127.5).sub_(1.0)
