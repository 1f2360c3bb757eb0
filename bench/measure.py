"""What the benchmarks share: device sync, peak memory, releasing memory between rows, number
formats, and a project script run as its CLI runs, on one thread."""
import ctypes
import gc
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
# OpenMP threads spin while another process holds a core: runs side by side get one thread each.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
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


def mean_spread(values: list[float], fmt: str) -> str:
    """"mean ± sample standard deviation" (the mean alone for one value)."""
    mean = statistics.fmean(values)
    return f"{mean:{fmt}} ± {statistics.stdev(values):{fmt}}" if len(values) > 1 else f"{mean:{fmt}}"


@dataclass(frozen=True)
class ScriptRun:
    returncode: int
    wall_s: float  # start-up included
    cpu_s: float  # user + system time of the process and its children: what it really got of a shared machine
    output: str  # its stdout and stderr, as written to its log


def run_on_one_thread(command: list[str], log: Path, cpu_budget_s: float | None = None) -> ScriptRun:
    """`command` (a project script and its flags) run from the repository root as its CLI runs it,
    with one OpenMP thread, its stdout and stderr written to `log`. With `cpu_budget_s`, the child
    gets SIGTERM (a trainer's stop signal: it checkpoints and exits 75) once it has used that much
    CPU time, start-up included: equal CPU time, however busy the machine is."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD})
        watcher = threading.Thread(target=_stop_at_cpu_budget, args=(process, cpu_budget_s), daemon=True)
        if cpu_budget_s is not None:
            watcher.start()
        _, status, usage = os.wait4(process.pid, 0)  # the child's own resource usage, not every child's of this process
        process.returncode = os.waitstatus_to_exitcode(status)
        if watcher.is_alive():
            watcher.join()
    return ScriptRun(process.returncode, time.perf_counter() - start, usage.ru_utime + usage.ru_stime, log.read_text())


def _stop_at_cpu_budget(process: subprocess.Popen, budget_s: float) -> None:
    """SIGTERM once the child's CPU time (every thread's, user + system) reaches `budget_s`."""
    try:
        child = psutil.Process(process.pid)
        while process.returncode is None:
            times = child.cpu_times()
            used = times.user + times.system
            if used >= budget_s:
                child.send_signal(signal.SIGTERM)
                return
            time.sleep(min(1.0, max(0.05, budget_s - used)))  # CPU time runs no faster than the wall clock
    except psutil.NoSuchProcess:  # it ended on its own
        return


def last_line(text: str) -> str:
    """The last non-empty line of a failed command's output: its error."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
