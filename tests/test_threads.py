"""train/run/threads.py: a rank's intra-op threads, chosen from its cores, its machine's ranks and
its decoding workers; --threads, then a user's OMP_NUM_THREADS, win over the share."""
import os
import shlex
import subprocess
import sys
import time

import psutil
import pytest
import torch

from tests.conftest import completed, train_in_process
from train.run.threads import CoreShare, CpuSample, ThreadChoice, choose_threads, set_threads, user_omp_threads


def test_a_rank_takes_its_share_of_the_cores_less_its_decoding_workers():
    assert choose_threads(16, 1, 0).threads == 16
    assert choose_threads(16, 2, 2).threads == 6  # 8 cores a rank, 2 of them decoding
    assert choose_threads(2, 2, 0).threads == 1
    assert choose_threads(2, 1, 2).threads == 1  # never below one, however many workers
    assert choose_threads(16, 1, 0).source == "share"


def test_threads_flag_wins_over_omp_num_threads_which_wins_over_the_share():
    user = {"OMP_NUM_THREADS": "3"}
    assert choose_threads(16, 2, 2, requested=5, environ=user).threads == 5
    assert (choose_threads(16, 2, 2, environ=user).threads, choose_threads(16, 2, 2, environ=user).source) == (3, "OMP_NUM_THREADS")


def test_torchruns_own_one_thread_is_not_taken_for_the_users():
    assert user_omp_threads({"OMP_NUM_THREADS": "1", "TORCHELASTIC_RUN_ID": "x"}) is None
    assert user_omp_threads({"OMP_NUM_THREADS": "1"}) == 1
    assert user_omp_threads({"OMP_NUM_THREADS": "4", "TORCHELASTIC_RUN_ID": "x"}) == 4
    assert user_omp_threads({"OMP_NUM_THREADS": "4,2"}) == 4  # OpenMP's nested form
    assert user_omp_threads({"OMP_NUM_THREADS": "0"}) is None and user_omp_threads({"OMP_NUM_THREADS": "many"}) is None


def test_set_threads_sets_torchs_intra_op_threads():
    before = torch.get_num_threads()
    try:
        choice = set_threads(None, workers=0, environ={"LOCAL_WORLD_SIZE": "64"})
        assert (choice.threads, choice.local_ranks, torch.get_num_threads()) == (1, 64, 1)
        assert set_threads(2, workers=0, environ={}).threads == torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_run_logs_its_thread_choice_in_one_line(tmp_path):
    result = completed(train_in_process("train/wgangp.py", "--debug", "--max-steps", "1", "--threads", "1",
                                        "--out", str(tmp_path / "run")))
    assert "threads: 1 intra-op thread per process (--threads)\n" in result.stdout
    assert result.stdout.count("threads: ") == 1


def test_threads_below_one_are_refused_naming_the_flag(tmp_path):
    result = train_in_process("train/wgangp.py", "--debug", "--threads", "0", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "--threads 0: must be at least 1" in result.stderr


def test_a_rank_on_the_share_computes_on_what_other_processes_leave_of_its_cpus():
    lines, cpus = [], len(os.sched_getaffinity(0))
    share = CoreShare(ThreadChoice(cpus, "share", cpus, 1, 0), lines.append, sample=lambda cpus: CpuSample(0.0, 0.0, 0.0))
    before = torch.get_num_threads()
    try:
        # 10 s in which this process tree used 10 CPU-seconds and others all but one CPU's worth
        share.adjust(CpuSample(10.0, 10.0 + 10.0 * (cpus - 1), 10.0))
        assert share.threads == torch.get_num_threads() == 1
        assert len(lines) == 1 and lines[0].startswith("threads: 1 intra-op thread from here: other processes keep")
        # the others gone: back to the share, never above it
        share.adjust(CpuSample(20.0, 10.0 + 10.0 * (cpus - 1) + 10.0, 20.0))
        assert share.threads == torch.get_num_threads() == cpus and len(lines) == 2
        share.adjust(CpuSample(30.0, 10.0 * cpus + 10.0, 30.0))  # unchanged: no line
        assert len(lines) == 2
    finally:
        torch.set_num_threads(before)


def test_only_a_rank_on_the_share_watches_its_cpus():
    assert CoreShare.watching(ThreadChoice(2, "--threads", 2, 1, 0), print) is None
    assert CoreShare.watching(ThreadChoice(2, "OMP_NUM_THREADS", 2, 1, 0), print) is None
    assert isinstance(CoreShare.watching(ThreadChoice(2, "share", 2, 1, 0), print), CoreShare)


@pytest.mark.slow  # waits for a second of another process's CPU time
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs: one for the other process, one left")
def test_a_busy_process_beside_the_rank_is_measured_as_others_and_its_own_workers_are_not():
    """Real CPU time: a spinning process that is not this one's child counts as another process's;
    the same spinning as a child (a decoding worker) does not."""
    def spun_for(process: psutil.Process, seconds: float) -> None:
        start = sum(process.cpu_times()[:2])
        while sum(process.cpu_times()[:2]) - start < seconds:  # its own CPU time, not a fixed sleep
            time.sleep(0.02)

    spin = [sys.executable, "-c", "while True: pass"]
    cpus = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        # started by a shell that exits at once: the spinner is nobody's child here
        other = psutil.Process(int(subprocess.check_output(["sh", "-c", f"{shlex.join(spin)} >/dev/null 2>&1 & echo $!"])))
        try:
            spun_for(other, 0.2)
            share = CoreShare(ThreadChoice(cpus, "share", cpus, 1, 0), print)
            spun_for(other, 0.5)
            share.adjust(CpuSample.now(os.sched_getaffinity(0)))
            assert share.threads == max(1, cpus - 1)
        finally:
            other.kill()
        with subprocess.Popen(spin) as worker:
            try:
                share = CoreShare(ThreadChoice(cpus, "share", cpus, 1, 0), print)
                spun_for(psutil.Process(worker.pid), 0.5)
                share.adjust(CpuSample.now(os.sched_getaffinity(0)))
                assert share.threads == cpus
            finally:
                worker.kill()
    finally:
        torch.set_num_threads(before)
