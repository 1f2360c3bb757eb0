"""An out-of-memory error in a run's first steps: the batch does not fit the device, and the user
gets one line naming the flags that size it (issue 23: a --batch-size too large ended in the OOM
killer or an allocator traceback). Later in a run, the same error is left as it is: by then the
batch has fit many times, and the cause lies elsewhere."""
import re

import torch

from train.run.config import TrainConfig
from train.run.flags import ConfigError


def is_out_of_memory(error: RuntimeError) -> bool:
    """CUDA's allocator (torch.OutOfMemoryError), or the CPU's when malloc refuses."""
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def batch_too_large(config: TrainConfig, step: int, device: torch.device, error: RuntimeError) -> ConfigError:
    """The one line for an out-of-memory error in the first steps: the flags that size the step's
    memory, and how to keep what an update sees (--grad-accum batches of --batch-size per process)."""
    size, accumulated = config.batch_size, config.grad_accum
    tried = re.search(r"Tried to allocate ([\d.]+ \w+)", str(error))
    where = f"out of memory in step {step} on {device}" + (f" (tried to allocate {tried.group(1)})" if tried else "")
    fix = (f"lower --batch-size and raise --grad-accum as much, which keeps {size * accumulated} images per update,"
           f" e.g. --batch-size {size // 2} --grad-accum {accumulated * 2}") if size > 1 else (
           "--batch-size is 1 already: choose a smaller model or a device with more memory")
    return ConfigError(f"{where}: --batch-size {size} --grad-accum {accumulated} do not fit; {fix}")
