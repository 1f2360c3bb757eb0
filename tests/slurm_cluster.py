"""A real single-node Slurm on this machine for the launcher tests: munge, slurmctld and slurmd
with a private slurm.conf, state and ports under a temporary folder. Needs root and Debian's
slurm-wlm and munge (.ci/run installs them). Stops only what it started."""
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET_DIR = Path("/run/munge")
# Both real jobs of tests/test_slurm.py at once (one task, then two): the node declares that many
# CPUs whatever the machine has, and config_overrides makes slurmd take the declaration over what
# it counts (an over-subscribed 2-core machine only runs them slower).
CPUS = 4
# The jobs run beside the rest of the suite (conftest: submitted first, judged last): at the lowest
# priority (slurmd's, which Slurm's tasks inherit), they take the CPU time the other tests leave idle
# while those wait on their own processes, instead of slowing them.
NICE = {"slurmd": ["nice", "-n", "19"]}
# Niceness alone does not do that under autogroup scheduling (tests/background.py), which the
# jobs are not lowered by yet: see there.
# cred_expire also sets how long Slurm holds a requeued job before it may start again (120 s by
# default), and the schedulers look for it every 5 s (60 and 30 by default): a short requeue.
SLURM_CONF = """\
ClusterName=facegan-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
SlurmdParameters=config_overrides
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
WAITING_OR_RUNNING = ("PENDING", "RUNNING")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable_reason() -> str | None:
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return f"Slurm is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root"
    if not MUNGE_KEY.is_file():
        return f"no {MUNGE_KEY}: reinstall munge, or create one with mungekey"
    return None


class LocalSlurm:
    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._munged_pid: int | None = None

    def start(self) -> "LocalSlurm":
        for sub in ("state", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self.conf.write_text(SLURM_CONF.format(
            host=socket.gethostname().split(".")[0], ctld_port=_free_port(), slurmd_port=_free_port(),
            dir=self.folder, cpus=CPUS,
        ))
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([*NICE.get(daemon, []), daemon, "-f", str(self.conf)], check=True, env=self.env, capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        while self.scontrol("show", "node", check=False).find("State=IDLE") < 0:
            if time.monotonic() > deadline:
                log = (self.folder / "slurmctld.log").read_text()[-2000:] if (self.folder / "slurmctld.log").exists() else ""
                self.stop()
                raise RuntimeError(f"the local Slurm node never became idle:\n{log}")
            time.sleep(0.5)
        return self

    def _start_munge(self) -> None:
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
            return  # someone else's munged: use it, leave it
        MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
        subprocess.run(["munged", "--force"], check=True, capture_output=True, timeout=30)
        pid_file = MUNGE_SOCKET_DIR / "munged.pid"
        deadline = time.monotonic() + 10
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._munged_pid = int(pid_file.read_text()) if pid_file.exists() else None

    def stop(self) -> None:
        # Every job of this private cluster is a test's.
        subprocess.run(["scancel", "--quiet", "--user", "root"], env=self.env, capture_output=True, timeout=30)
        for daemon in ("slurmd", "slurmctld"):
            pid_file = self.folder / f"{daemon}.pid"
            if pid_file.exists():  # its state is this temporary folder's: no need to wait for a clean save
                _terminate(int(pid_file.read_text()), timeout=1)
        if self._munged_pid is not None:
            _terminate(self._munged_pid)

    def scontrol(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)}: {result.stderr}")
        return result.stdout

    def sbatch(self, *args: str, env: dict | None = None, cwd: Path | None = None) -> int:
        result = subprocess.run(
            ["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd,
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """scontrol's view of a job: JobState, Restarts, ExitCode, ..."""
        text = self.scontrol("show", "job", "--oneliner", str(job_id))
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_until_done(self, job_id: int, timeout: float, log: Path | None = None) -> dict[str, str]:
        """Poll until the job is in a final state (a requeued job goes back to PENDING first)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.get("JobState") in FINAL_STATES:
                return job
            if time.monotonic() > deadline:
                subprocess.run(["scancel", str(job_id)], env=self.env, capture_output=True)
                tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
                raise AssertionError(f"job {job_id} not done after {timeout:.0f} s: {job.get('JobState')}\n{tail}")
            time.sleep(1)


class WatchedJob:
    """A submitted job and a thread that does one thing to it (`act`) as soon as `ready()`, while
    it is still pending or running: what a test would do between sbatch and the job's end, so that
    several jobs run side by side. What kept the thread from acting (its deadline, the job ending
    first, an error) is kept for the job's test to report; the job is then cancelled, so that it
    does not slow the others."""

    def __init__(self, cluster: LocalSlurm, job_id: int, log: Path, ready: Callable[[], bool],
                 act: Callable[[], None], timeout: float):
        self.cluster, self.id, self.log = cluster, job_id, log
        self.problem: str | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(ready, act, timeout), name=f"job {job_id}", daemon=True)
        self._thread.start()

    def _watch(self, ready: Callable[[], bool], act: Callable[[], None], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                state = self.cluster.job(self.id).get("JobState")
                # Only an ended job is a problem: between PENDING and RUNNING Slurm shows passing
                # states (SIGNALING while it sends the time-limit signal, CONFIGURING, REQUEUED...)
                if state in FINAL_STATES and not ready():  # ready() again: it may have come just before
                    self.problem = f"job {self.id} was {state} before the moment to act"
                elif time.monotonic() > deadline:
                    self.problem = f"job {self.id} still {state} and not ready to act on after {timeout:.0f} s"
                if self.problem or self._stopping.wait(0.5):
                    break
            else:
                act()
        except Exception as error:  # reported by the job's test, not lost in this thread
            self.problem = f"watching job {self.id}: {error!r}"
        if self.problem:
            subprocess.run(["scancel", str(self.id)], env=self.cluster.env, capture_output=True, timeout=30)

    def wait_until_done(self, timeout: float) -> dict[str, str]:
        """The job's final state, once the thread has acted on it; fails with the thread's problem
        and the log's end."""
        self._thread.join(timeout)
        tail = self.log.read_text()[-4000:] if self.log.exists() else ""
        assert not self._thread.is_alive(), f"job {self.id}: its watcher still busy after {timeout:.0f} s\n{tail}"
        assert self.problem is None, f"{self.problem}\n{tail}"
        return self.cluster.wait_until_done(self.id, timeout, self.log)

    def stop_watching(self) -> None:
        self._stopping.set()
        self._thread.join(60)


def _terminate(pid: int, timeout: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
