"""What the benchmarks share: device sync, peak memory, releasing memory between rows, number format."""
import ctypes
import gc
import sys
import threading

import psutil
import torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda", 0) if CUDA else torch.device("cpu")


def synchronize() -> None:
    if CUDA:
        torch.cuda.synchronize()


def memory_in_use() -> int:
    return torch.cuda.memory_allocated() if CUDA else psutil.Process().memory_info().rss


class PeakMemory:
    """Peak memory in use during the block above its level at entry: CUDA allocations, or on the
    CPU the process's resident set sampled every 5 ms (no allocator keeps a CPU peak)."""

    def __enter__(self) -> "PeakMemory":
        self.start, self.peak, self.done = memory_in_use(), 0, threading.Event()
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, memory_in_use() - self.start)

    def __exit__(self, *exc) -> None:
        self.done.set()
        if CUDA:
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.sampler.join()
            self.peak = max(self.peak, memory_in_use() - self.start)


def release() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
    elif sys.platform == "linux":  # glibc keeps freed heap; hand it back so the next row's RSS rise starts low
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def significant(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2g}"
