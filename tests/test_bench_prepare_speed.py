"""bench/prepare_speed.py's CPU count of prepare's decoding processes (README, `prepare`'s first
pass): read from the kernel's accounts of the processes the forkserver reaped, never sampled."""
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

from bench.prepare_speed import ProcessesUnder


def burn(seconds: float) -> tuple[int, float]:
    """Spins for `seconds` of this process's CPU; its pid and the CPU it has used so far."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return os.getpid(), time.process_time()


def test_the_cpu_of_a_forkservers_processes_is_counted_once_they_have_ended():
    with ProcessesUnder() as idle:
        pass
    assert idle.cpu_seconds() == 0
    with ProcessesUnder() as under:
        with ProcessPoolExecutor(2, multiprocessing.get_context("forkserver")) as pool:
            used = dict(pool.map(burn, [0.05] * 4))  # each process's last report: all it used but its exit
    tick = 1 / os.sysconf("SC_CLK_TCK")  # the kernel's accounts count clock ticks, each process's rounded down
    assert len(used) >= 1 and under.cpu_seconds() + tick * len(used) >= sum(used.values()) >= 0.1
