"""How many intra-op threads a rank computes with: chosen from the CPUs it may use, not inherited.

OpenMP threads spin while they wait, and a spinning thread holds its core. A rank that takes every
core beside a second rank, a decoding worker or another run loses most of its time to that: on this
project's 2-core CPU, two debug runs side by side took 136 s with torch's default threads against
24 s with one thread each (one run alone: 17 s; issue 24). So each rank takes its share of the CPUs
it may run on (`os.sched_getaffinity`, which follows taskset, cgroups' cpusets and Slurm's
--cpus-per-task): the CPUs over the ranks on this machine, less one for each of its decoding
workers, which decode on a core of their own while the rank trains. Hyperthreads count as the
cores behind them (torch's own default is the physical cores: two threads on one core's
hyperthreads only share its arithmetic units), so a run alone never takes more threads than
torch would have given it.

Runs started separately on the same CPUs know nothing of each other's share, and two that each
take every core spin against each other (two unpinned debug runs side by side: 3.4x the time of
one alone, where the fair share is 2x). So a rank on the share also watches the CPUs it may use:
every few seconds, the time other processes kept them busy, and it computes on what they leave
(never more than its share, never fewer than 1 thread), said in a line whenever that changes.
Its own decoding workers are not "other processes": the share has already left them their cores.

Precedence: --threads, then an OMP_NUM_THREADS the user set, then the share. torchrun writes
OMP_NUM_THREADS=1 for every rank of a multi-rank launch when it is unset, which cannot be told
apart from a user's 1 in the rank; so under torchrun a value of 1 is taken as torchrun's, and a
user who wants one thread there says --threads 1.
"""
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psutil
import torch

from train.common.cores import usable_cores

OMP_VARIABLE = "OMP_NUM_THREADS"
TORCHRUN_VARIABLE = "TORCHELASTIC_RUN_ID"  # set by torchrun (torch.distributed.run) in every rank


@dataclass(frozen=True)
class ThreadChoice:
    """A rank's intra-op thread count and where it came from, said in one log line."""

    threads: int
    source: str  # "--threads", "OMP_NUM_THREADS" or "share"
    cores: int
    local_ranks: int
    workers: int

    def line(self) -> str:
        plural = "s" if self.threads != 1 else ""
        if self.source == "--threads":
            return f"threads: {self.threads} intra-op thread{plural} per process (--threads)"
        if self.source == OMP_VARIABLE:
            return f"threads: {self.threads} intra-op thread{plural} per process ({OMP_VARIABLE}; --threads overrides it)"
        return (
            f"threads: {self.threads} intra-op thread{plural} per process: {self.cores} core{'s' if self.cores != 1 else ''} over {self.local_ranks}"
            f" process{'es' if self.local_ranks != 1 else ''} on this machine, less {self.workers} decoding"
            f" worker{'s' if self.workers != 1 else ''} each (--threads N to choose)"
        )


def user_omp_threads(environ: Mapping[str, str]) -> int | None:
    """The thread count the user asked for in OMP_NUM_THREADS, or None: unset, not a positive
    count (torch ignores such a value too), or torchrun's own 1."""
    value = environ.get(OMP_VARIABLE, "").split(",")[0].strip()  # OpenMP's nested form: "4,2" is 4 at the top
    if not value.isdigit() or int(value) < 1:
        return None
    if value == "1" and TORCHRUN_VARIABLE in environ:
        return None
    return int(value)


def choose_threads(
    cores: int, local_ranks: int, workers: int, requested: int | None = None, environ: Mapping[str, str] = {}
) -> ThreadChoice:
    """The intra-op threads of one rank among `local_ranks` on `cores` cores, each rank with `workers`
    decoding workers; `requested` is --threads (None: not given)."""
    local_ranks = max(1, local_ranks)
    if requested is not None:
        return ThreadChoice(requested, "--threads", cores, local_ranks, workers)
    if (from_environment := user_omp_threads(environ)) is not None:
        return ThreadChoice(from_environment, OMP_VARIABLE, cores, local_ranks, workers)
    return ThreadChoice(max(1, cores // local_ranks - workers), "share", cores, local_ranks, workers)


def set_threads(requested: int | None, workers: int, environ: Mapping[str, str] = os.environ) -> ThreadChoice:
    """Choose this rank's threads from its CPU affinity, LOCAL_WORLD_SIZE (torchrun's ranks on this
    machine) and its decoding workers, and set them; the choice, for the log."""
    local_ranks = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    choice = choose_threads(usable_cores(), local_ranks, workers, requested, environ)
    torch.set_num_threads(choice.threads)
    return choice


@dataclass(frozen=True)
class CpuSample:
    """Busy CPU-seconds on the CPUs this process may use: all processes', and this process tree's."""

    at: float  # time.monotonic()
    busy: float
    ours: float

    @classmethod
    def now(cls, cpus: set[int]) -> "CpuSample":
        per_cpu = psutil.cpu_times(percpu=True)
        # Steal is another virtual machine's time and iowait is idle: neither is a process here.
        busy = sum(t.user + t.nice + t.system + t.irq + t.softirq for cpu, t in enumerate(per_cpu) if cpu in cpus)
        return cls(time.monotonic(), busy, _tree_cpu_seconds(psutil.Process()))


def _tree_cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.Error:  # a decoding worker that ended in between
            continue
        total += times.user + times.system
    return total


class CoreShare:
    """A rank's intra-op threads kept to what other processes leave of its CPUs (module docstring)."""

    INTERVAL_SECONDS = 2.0

    def __init__(self, choice: ThreadChoice, report: Callable[[str], None], sample: Callable[[set[int]], CpuSample] = CpuSample.now):
        self.most, self.threads, self.report, self.sample = choice.threads, choice.threads, report, sample
        self.cpus = os.sched_getaffinity(0)  # the run's, for its whole life
        self.cores_per_cpu = choice.cores / len(self.cpus)
        self.last = sample(self.cpus)

    @classmethod
    def watching(cls, choice: ThreadChoice, report: Callable[[str], None]) -> "CoreShare | None":
        """A CoreShare for a rank on the share; None where --threads or OMP_NUM_THREADS fixed the count."""
        return cls(choice, report) if choice.source == "share" else None

    def after_step(self) -> None:
        if time.monotonic() - self.last.at >= self.INTERVAL_SECONDS:
            self.adjust(self.sample(self.cpus))

    def adjust(self, sample: CpuSample) -> None:
        """Threads for what other processes used of these CPUs since the last sample."""
        others = max(0.0, (sample.busy - self.last.busy) - (sample.ours - self.last.ours)) / (sample.at - self.last.at)
        self.last = sample
        free = len(self.cpus) - others
        threads = max(1, min(self.most, math.floor(free * self.cores_per_cpu + 0.5)))
        if threads != self.threads:
            self.threads = threads
            torch.set_num_threads(threads)
            plural = "s" if threads != 1 else ""
            self.report(f"threads: {threads} intra-op thread{plural} from here: other processes keep {others:.1f}"
                        f" of this process's {len(self.cpus)} CPUs busy (its share: {self.most}; --threads N fixes it)")
