"""The cores a process may use: what the trainer shares its threads out of (train/run/threads.py)
and what tells `prepare` whether a decoding thread has a core to run on (train/data/prepare_shards.py)."""
import os

import psutil


def usable_cores() -> int:
    """The cores behind the CPUs this process may run on: its affinity, hyperthreads counted as the
    machine's share of cores per logical CPU."""
    logical = psutil.cpu_count(logical=True) or 1
    physical = psutil.cpu_count(logical=False) or logical
    return max(1, len(os.sched_getaffinity(0)) * physical // logical)
