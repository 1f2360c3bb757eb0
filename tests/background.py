"""Work the suite starts early and judges late (the real Slurm jobs, the DeepSpeed cases' launch),
kept at the lowest priority so that it takes only the CPU time the other tests leave idle.

Niceness alone does not do that. Linux's autogroup scheduling (sched_autogroup_enabled) first shares
the CPU between sessions, and each Slurm task, each torchrun rank and each launch started in a
session of its own gets as much CPU as all of pytest's session, whatever its niceness. Measured on
2 cores: two CPU-bound nice-19 processes in sessions of their own slowed a loop in pytest's session
from 1.75 s to 2.46 s, and a 2-thread torch loop from 3.6 s to 26.9 s (its OpenMP threads wait for
each other at every barrier); with those sessions' autogroups at nice 19 too, 1.65 s and 3.9 s.
So a thread sets the autogroup of every background process to nice 19 as it appears
(/proc/PID/autogroup): each process registered here, and its descendants.

Not the real Slurm jobs (they keep slurmd's nice 19 only). Lowered this way on a fresh clone's run
(2026-12-03 13:37), the time-limited job's trainer was starting, starved, when Slurm's time-limit
SIGUSR1 came, and the run went on to its last step. One way for node.sh to drop that request was
found and closed: it read a rank's pid file that the rank had created but not yet written (a
process at 1/68 of a core can stay between the two for seconds), counted that rank as signalled
and cleared the pending signal; the pid file is now written whole (train/run/stop.py) and node.sh
keeps the request until each rank has had it (test_slurm's pid-file test). A starved job had
other such moments, the batch shell's and node.sh's own set-up before their traps, now trapped from
their first lines (test_slurm's set-up tests). The jobs still start at a full session's share: the
gain from lowering them was within the VM's run-to-run spread, and there their tests have passed in
every run since the watcher's fix (2026-12-03)."""
import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

NICE = 19
POLL_S = 0.2


class _Background:
    def __init__(self):
        self._registered: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, pid: int) -> None:
        """`pid` and every process it starts from now on run in the background."""
        _lower(pid)
        with self._lock:
            self._registered.add(pid)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="background priority", daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        """Only the new pids of /proc are read each poll: a few hundred microseconds."""
        seen: set[int] = set()
        background: set[int] = set()
        while True:
            pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
            with self._lock:
                background |= self._registered
            for pid in sorted(pids - seen):  # a parent before its children
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                except OSError:
                    continue  # ended already
                after = stat[stat.rindex(")") + 2 :].split()  # after the name: state, ppid, ...
                if pid in background or int(after[1]) in background:
                    background.add(pid)
                    _lower(pid)
            background &= pids
            seen = pids
            time.sleep(POLL_S)


def _lower(pid: int) -> None:
    with contextlib.suppress(OSError):  # ended already, or a kernel without autogroups
        Path(f"/proc/{pid}/autogroup").write_text(str(NICE))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, NICE)


background = _Background()


@dataclass(frozen=True)
class Launch:
    """A command started in the background; its stdout and stderr in `folder`'s launch.out and
    launch.err (a pipe nobody reads before the end would fill and stop it)."""

    folder: Path
    process: subprocess.Popen

    def output(self) -> tuple[str, str]:
        return (self.folder / "launch.out").read_text(), (self.folder / "launch.err").read_text()

    def ended(self, timeout: float) -> subprocess.CompletedProcess | subprocess.TimeoutExpired:
        """Its end and output; one past `timeout` is killed with everything it started."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as timed_out:
            self.end()
            timed_out.stdout, timed_out.stderr = self.output()
            return timed_out
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, *self.output())

    def end(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def assert_in_background(self) -> None:
        """Still running, at the background priority: its autogroup (where the kernel has them) and niceness."""
        pid = self.process.pid
        assert self.process.poll() is None, self.output()[1][-3000:]
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():
            assert autogroup.read_text().split()[-1] == str(NICE), autogroup.read_text()
        assert os.getpriority(os.PRIO_PROCESS, pid) == NICE


def start_in_background(command: list[str], folder: Path, env: dict[str, str], cwd: Path) -> Launch:
    """`command` from now on, in a session of its own, at the background priority."""
    with (folder / "launch.out").open("w") as stdout, (folder / "launch.err").open("w") as stderr:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True, start_new_session=True)
    background.add(process.pid)
    return Launch(folder, process)
