"""train/run/lock.py: one run per --out at a time; a second start or resume is refused naming the
holder, and touches nothing; the kernel frees the lock the moment its holder is gone (issue 17)."""
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from tests.conftest import ROOT, TORCHRUN_CPU_ENV, torchrun_cpu
from train.report.metrics import read_metrics
from train.run.checkpoint import latest_checkpoint
from train.run.lock import LOCK_FILE, RunLock, RunLocked
from train.run.runner import main
from train.wgangp import WGANGPConfig, make_objective

T = TypeVar("T")
RESUMABLE = 75
# One torch thread: on a loaded 2-core machine, OpenMP threads that spin on each other make a debug
# step take seconds instead of a tenth of one.
TRAINER_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

# Takes the lock on argv[1] from another process and keeps it until killed.
HOLDER = """
import sys, time
from train.run.lock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""

# The same, then forks a child that inherits the lock file's descriptor and outlives the holder,
# as a DataLoader worker would.
FORKING_HOLDER = """
import os, sys, time
from train.run.lock import RunLock
RunLock(sys.argv[1]).acquire()
child = os.fork()
if child == 0:
    time.sleep(600)
    os._exit(0)
print(f"locked {child}", flush=True)
time.sleep(600)
"""

# Locks run.lock the way RunLock does but dies before writing its name: a holder still starting.
SILENT_HOLDER = """
import fcntl, os, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], "run.lock"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(600)
"""


pytestmark = pytest.mark.usefixtures("own_handlers")


@contextlib.contextmanager
def started(command: list[str], **kwargs):
    """A process in its own session, SIGKILLed with everything it started on the way out."""
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True, **kwargs)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def read_line(process: subprocess.Popen, timeout: float = 60) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no line from {process.args} in {timeout} s"
    line = process.stdout.readline()
    assert line, f"{process.args} ended (code {process.wait(timeout=10)}) without a line"
    return line.strip()


def start_holder(script: str, out: Path):
    return started([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], T], process: subprocess.Popen, log: Path, timeout: float = 180) -> T:
    """Poll `condition` until it is truthy, while `process` runs; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert process.poll() is None, f"ended early with code {process.returncode}:\n{log.read_text()[-4000:]}"
        time.sleep(0.01)
    pytest.fail(f"not there after {timeout} s:\n{log.read_text()[-4000:]}")


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # whole lines only: the last may be being written
    return [json.loads(line)["step"] for line in lines if line]


def lock_holder_pid(out: Path) -> int | None:
    try:
        return json.loads((out / LOCK_FILE).read_text())["pid"]
    except (OSError, ValueError, KeyError):  # not there yet, or not written yet
        return None


def snapshot(out: Path) -> dict[str, tuple]:
    """Everything in --out: each entry's size, mtime and inode, and the bytes of the two files a
    start would rewrite."""
    entries = {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*")}
    entries["."] = (out.stat().st_mtime_ns, out.stat().st_ino)
    for name in ("config.json", "metrics.jsonl"):
        entries[f"{name} bytes"] = (out / name).read_bytes()
    return entries


@contextlib.contextmanager
def paused(pid: int):
    """SIGSTOP: the run still holds its lock but writes nothing while we look."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def assert_refused(capsys, out: Path, pid: int) -> None:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: --out {out} is in use by another run (pid {pid} on {socket.gethostname()}, started ")
    assert lines[0].endswith("wait for it to end or stop it, or choose another --out")


def test_the_lock_file_names_the_holders_host_pid_and_start_time(tmp_path):
    before = time.time()
    with RunLock(tmp_path / "run"):
        holder = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert holder.keys() == {"host", "pid", "started"}
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    assert before <= holder["started"] <= time.time()


def test_a_released_lock_is_taken_again_by_another_process_and_the_file_stays(tmp_path):
    out = tmp_path / "run"
    RunLock(out).acquire().release()
    assert (out / LOCK_FILE).exists()
    with start_holder(HOLDER, out) as holder:
        assert read_line(holder) == "locked"
        assert lock_holder_pid(out) == holder.pid


def test_a_lock_held_by_another_process_is_refused_naming_its_pid_and_left_as_it_was(tmp_path):
    out = tmp_path / "run"
    with start_holder(HOLDER, out) as holder:
        assert read_line(holder) == "locked"
        content = (out / LOCK_FILE).read_bytes()
        with pytest.raises(RunLocked, match=rf"^--out {out} is in use by another run \(pid {holder.pid} on "):
            RunLock(out).acquire()
        assert (out / LOCK_FILE).read_bytes() == content
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]


def test_the_lock_is_free_the_moment_its_holder_is_killed(tmp_path):
    out = tmp_path / "run"
    with start_holder(HOLDER, out) as holder:
        assert read_line(holder) == "locked"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with RunLock(out):  # no waiting, no stale-lock clean-up: the kernel dropped it with the process
            assert lock_holder_pid(out) == os.getpid()


def test_a_forked_child_of_the_holder_does_not_keep_the_lock_once_the_holder_is_gone(tmp_path):
    # POSIX record locks belong to a process, not to its descriptors: an orphaned worker holding
    # the inherited descriptor open must not keep the run's folder locked (flock() would).
    out = tmp_path / "run"
    with start_holder(FORKING_HOLDER, out) as holder:
        child = int(read_line(holder).split()[1])
        with pytest.raises(RunLocked, match=f"pid {holder.pid} "):
            RunLock(out).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE
        with RunLock(out):
            pass


def test_a_holder_that_has_not_written_its_name_yet_is_called_a_starting_process(tmp_path):
    out = tmp_path / "run"
    with start_holder(SILENT_HOLDER, out) as holder:
        assert read_line(holder) == "locked"
        with pytest.raises(RunLocked, match=r"in use by another run \(a process that is starting\)"):
            RunLock(out).acquire()


def test_undoing_a_failed_start_removes_the_lock_and_an_out_it_made_but_not_a_users_files(tmp_path):
    made = tmp_path / "new"
    with RunLock(made) as lock:
        lock.undo_if_alone()
    assert not made.exists()

    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with RunLock(existing) as lock:
        lock.undo_if_alone()
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]
    assert (existing / "notes.txt").read_text() == "mine"


def test_undoing_a_failed_start_puts_back_the_lock_file_it_found_and_removes_every_folder_it_made(tmp_path):
    nested = tmp_path / "new" / "runs" / "run"
    with RunLock(nested) as lock:
        lock.undo_if_alone()
    assert list(tmp_path.iterdir()) == []

    out = tmp_path / "run"  # a run's: its lock released, its holder's name left in it
    out.mkdir()
    found = b'{"host": "node7", "pid": 4242, "started": 1700000000.0}'
    (out / LOCK_FILE).write_bytes(found)
    (out / LOCK_FILE).chmod(0o600)
    with RunLock(out) as lock:
        assert lock_holder_pid(out) == os.getpid()
        lock.undo_if_alone()
    assert (out / LOCK_FILE).read_bytes() == found and (out / LOCK_FILE).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]


@pytest.mark.parametrize("kind, make", [("a folder", os.mkdir), ("a named pipe (FIFO)", os.mkfifo)])
def test_a_lock_path_that_is_no_regular_file_is_refused_in_one_line_and_left_alone(tmp_path, kind, make):
    out = tmp_path / "run"
    out.mkdir()
    make(out / LOCK_FILE)
    with pytest.raises(RunLocked) as refused:
        RunLock(out).acquire()
    assert str(refused.value) == (f"--out {out}: {out / LOCK_FILE} is {kind}, where the run keeps its lock file; move it"
                                  " away, or choose another --out")
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]


@pytest.mark.slow  # a live run's process beside this one: the whole suite's, not the inner loop's
def test_a_second_start_or_resume_into_a_live_run_is_refused_and_touches_nothing(tmp_path, capsys):
    out, log = tmp_path / "run", tmp_path / "first.log"
    first_run = [sys.executable, str(ROOT / "train/wgangp.py"), "--debug", "--max-steps", "200", "--log-every", "1",
                 "--ckpt-every", "4", "--out", str(out)]
    with log.open("w") as sink, started(first_run, stdout=sink, stderr=subprocess.STDOUT, env=TRAINER_ENV) as first:
        wait_for(lambda: logged_steps(out), first, log)
        with paused(first.pid):
            # Before the first checkpoint a plain start passes check_run_dir: only the lock stops it.
            assert latest_checkpoint(out) is None, "the first checkpoint came before the second start was tried"
            before = snapshot(out)
            assert main(WGANGPConfig, make_objective, "test", ["--debug", "--out", str(out), "--seed", "2"]) == 2
            assert_refused(capsys, out, first.pid)
            assert snapshot(out) == before

        wait_for(lambda: latest_checkpoint(out), first, log)
        with paused(first.pid):
            before = snapshot(out)
            for resume in (["--resume"], ["--resume", "auto"]):
                assert main(WGANGPConfig, make_objective, "test", [*resume, "--out", str(out)]) == 2
                assert_refused(capsys, out, first.pid)
            assert snapshot(out) == before

        first.send_signal(signal.SIGTERM)  # a graceful stop: a checkpoint, then the resumable code
        first.wait(timeout=120)
    assert first.returncode == RESUMABLE, log.read_text()[-4000:]
    steps = [record["step"] for record in read_metrics(out / "metrics.jsonl")]
    assert steps == list(range(1, steps[-1] + 1))  # every step once, in order: one writer only
    assert latest_checkpoint(out).name == f"step_{steps[-1]:06d}"


@pytest.mark.slow
def test_two_cpu_processes_take_the_lock_once_from_rank_0_and_refuse_a_concurrent_start(tmp_path, capsys):
    out, log = tmp_path / "two", tmp_path / "two.log"
    command = [*torchrun_cpu(2), str(ROOT / "train/wgangp.py"), "--debug", "--max-steps", "4", "--out", str(out)]
    with log.open("w") as sink, started(command, stdout=sink, stderr=subprocess.STDOUT, env={**TRAINER_ENV, **TORCHRUN_CPU_ENV}) as launch:
        holder = wait_for(lambda: lock_holder_pid(out), launch, log)
        with paused(holder):
            rank = psutil.Process(holder).environ().get("RANK")
            assert latest_checkpoint(out) is None  # so only the lock can refuse what follows
            assert main(WGANGPConfig, make_objective, "test", ["--debug", "--max-steps", "4", "--out", str(out)]) == 2
        assert_refused(capsys, out, holder)
        assert rank == "0" and holder != launch.pid
        launch.wait(timeout=240)
    assert launch.returncode == 0, log.read_text()[-4000:]
    assert lock_holder_pid(out) == holder  # rank 1 took no lock: it would have been refused, and failed the run
    assert read_metrics(out / "metrics.jsonl")[-1]["world_size"] == 2
