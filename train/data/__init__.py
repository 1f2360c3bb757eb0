"""Data sources behind one interface: each rank gets an endless, resumable stream of batches.

A `--data` spec names the source: `synthetic`, `toy:8gaussians`, `toy:25gaussians`, a folder of
images, `hf:<dataset-id>` or `parquet:<glob>`; the last three share one `datasets` streaming
pipeline (streaming.py). Streams yield CPU tensors: uint8 images (N, 3, H, W) or float32 points
(N, 2); `to_model_input` turns them into model inputs on the device.
"""
from typing import Protocol

import torch

from train.data.generated import SyntheticImageStream, ToyStream, stream_seed, toy_modes
from train.data.specs import DataError, DataSpec, DataSpecError, parse_data_spec
from train.data.streaming import StreamingImages, check_skipped

__all__ = [
    "BatchStream", "DataError", "DataSpec", "DataSpecError", "check_skipped", "open_stream", "parse_data_spec",
    "stream_seed", "to_model_input", "toy_modes",
]


class BatchStream(Protocol):
    def __next__(self) -> torch.Tensor: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def counters(self) -> dict[str, int]: ...


def open_stream(spec: DataSpec, *, resolution: int, batch_size: int, seed: int, rank: int, world_size: int,
                **streaming_options) -> BatchStream:
    """This rank's endless stream of batches of `batch_size`; `streaming_options` (workers, split,
    image_column, celeba_crop, hflip, shuffle_buffer, pin_memory) concern hub, parquet and folder
    sources only, and generated streams ignore them."""
    if spec.kind == "toy":
        return ToyStream(spec.name, batch_size, stream_seed(seed, rank, 1))
    if spec.kind == "synthetic":
        return SyntheticImageStream(resolution, batch_size, stream_seed(seed, rank, 1))
    return StreamingImages(spec, resolution=resolution, batch_size=batch_size, seed=seed, rank=rank,
                           world_size=world_size, **streaming_options)


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] on the device (normalised there, after the cheap copy)."""
    batch = batch.to(device, non_blocking=True)
    if batch.dtype == torch.uint8:
        return batch.float().div_(127.5).sub_(1.0)
    return batch
