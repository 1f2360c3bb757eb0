"""Stop signals from the first instant (train/common/stop_signals.py) and Ctrl-C (train/run/stop.py):
SIGINT stops a run as SIGTERM does, with a checkpoint after the step and the resumable exit; a second
Ctrl-C aborts at once, the last whole checkpoint kept; and a stop signal that comes while the entry
script is still importing ends the run with the resumable status and nothing half-made in --out."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_lock import TRAINER_ENV, logged_steps, started
from train.common.stop_signals import ABORTED
from train.run.checkpoint import list_checkpoints
from train.run.config import check_run_dir, load_config, resuming
from train.run.outcome import EXIT_STATUS_FILE, RunStatus
from train.wgangp import WGANGPConfig

RESUMABLE = RunStatus.STOPPED.exit_code
TRAINER = [sys.executable, str(ROOT / "train/wgangp.py")]
# Long enough that no run here reaches it; every step logged, so that "every step once" can be checked.
LONG_DEBUG = ["--debug", "--max-steps", "400", "--log-every", "1", "--sample-every", "1000", "--ckpt-every", "1000"]


# A process that catches the stop signals, gets a SIGTERM, then replaces itself, as
# train/run/multi_cpu.py hands over to torchrun; the program after the exec reports what it got.
HANDS_OVER = """
import os, signal, sys
from train.common.stop_signals import before_exec, catch_stop_signals
catch_stop_signals()
os.kill(os.getpid(), signal.SIGTERM)
os.execve(sys.executable, [sys.executable, "-c", sys.argv[1]], {**os.environ, **before_exec()})
"""
AFTER_THE_EXEC = """
import signal
from train.common.stop_signals import adopt_early_requests, catch_stop_signals
print("SIGUSR1 ignored:", signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN)
catch_stop_signals()
print("requests:", adopt_early_requests())
"""


class Output:
    """A process's stdout and stderr together, read line by line as they come (by a thread, so that
    the test can wait for a line and still see the process end)."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.lines = process, []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 120) -> int:
        """The index of the first line that matches `pattern`; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((i for i, line in enumerate(self.lines) if re.search(pattern, line)), None)
            if found is not None:
                return found
            if self.process.poll() is not None and not self._reader.is_alive():
                pytest.fail(f"ended (code {self.process.returncode}) before a line matching {pattern!r}:\n{self.text()}")
            time.sleep(0.01)
        pytest.fail(f"no line matching {pattern!r} in {timeout} s:\n{self.text()}")

    def finish(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def text(self) -> str:
        return "\n".join(self.lines[-300:])


def start(command: list[str], env: dict | None = None):
    """The trainer in its own process group, as a shell starts a foreground job: a signal to the
    group reaches the rank and its decoding workers, as a terminal's Ctrl-C does."""
    return started(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**TRAINER_ENV, **(env or {})})


def wait_for_steps(out: Path, count: int, output: Output, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(logged_steps(out)) < count:
        if output.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"never saw {count} logged steps:\n{output.text()}")
        time.sleep(0.02)


def exit_status(out: Path) -> dict:
    return json.loads((out / EXIT_STATUS_FILE).read_text())


@pytest.fixture(scope="module")
def ctrl_c(tmp_path_factory) -> tuple[Path, int, Output]:
    """A run Ctrl-C'd after its second logged step: its --out, exit code and output. (Its decoding
    workers, in the terminal's process group too, ignore Ctrl-C: tests/test_streaming.py.)"""
    out = tmp_path_factory.mktemp("ctrl_c") / "run"
    with start([*TRAINER, *LONG_DEBUG, "--out", str(out)]) as process:
        output = Output(process)
        wait_for_steps(out, 2, output)
        os.killpg(process.pid, signal.SIGINT)
        return out, output.finish(), output


def test_ctrl_c_stops_the_run_after_the_step_with_a_checkpoint_and_the_resumable_exit(ctrl_c):
    out, code, output = ctrl_c
    text = output.text()
    assert code == RESUMABLE, text
    assert "rank 0: SIGINT received; stopping after this step with a checkpoint" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    status = exit_status(out)
    step = status["step"]
    assert (status["status"], status["exit_code"], status["reason"]) == ("stopped", RESUMABLE, "SIGINT")
    assert f"stopped at step {step}: SIGINT; checkpoint saved" in text
    assert [c.name for c in list_checkpoints(out)] == [f"step_{step:06d}"]
    assert logged_steps(out) == list(range(1, step + 1))


def test_the_run_resumes_from_there_and_a_second_ctrl_c_aborts_at_once_keeping_that_checkpoint(ctrl_c, tmp_path):
    out = Path(shutil.copytree(ctrl_c[0], tmp_path / "run"))
    step = exit_status(out)["step"]
    # Every checkpoint pauses with its files written, before the rename: the stop's own is where
    # the second Ctrl-C lands.
    with start([*TRAINER, "--resume", "--out", str(out)], env={"FACEGAN_FAILPOINTS": "checkpoint_pause=60"}) as process:
        output = Output(process)
        output.wait_for(f"resumed from step {step}$")
        wait_for_steps(out, step + 1, output)
        os.killpg(process.pid, signal.SIGINT)
        output.wait_for(r"failpoint checkpoint_pause: pausing 60 s")
        pressed = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        code = output.finish(timeout=50)  # well inside the pause's 60 s
        waited = time.monotonic() - pressed
    text = output.text()
    assert code == ABORTED, text
    assert waited < 20, f"{waited:.1f} s after the second Ctrl-C"
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    (abort_line,) = [line for line in output.lines if "aborting" in line]
    assert abort_line == "rank 0: SIGINT again: aborting now, without a checkpoint (the last whole one stays)"
    assert [c.name for c in list_checkpoints(out)] == [f"step_{step:06d}"]  # the stop's own never became whole
    assert len(list((out / "checkpoints").glob("*.tmp"))) == 1  # and the next start clears it (test_startup.py)


def test_a_stop_signal_before_the_slow_imports_ends_the_run_resumable_with_nothing_half_made(tmp_path):
    out = tmp_path / "run"
    # Python reports each import as it completes: the line for dataclasses, the entry script's
    # first import, comes before torch's seconds of import.
    with start([*TRAINER, *LONG_DEBUG, "--out", str(out)], env={"PYTHONPROFILEIMPORTTIME": "1"}) as process:
        output = Output(process)
        sent_after = output.wait_for(r"\|\s+dataclasses$")
        process.send_signal(signal.SIGTERM)
        code = output.finish()
    text = output.text()
    assert code == RESUMABLE, text
    assert any(re.search(r"\|\s+torch$", line) for line in output.lines[sent_after:]), "torch was imported before the signal"
    assert "rank 0: SIGTERM received while starting; the run ends before its set-up" in output.lines
    assert "exit code 75: stopped before the first checkpoint; start again with the same command (or --resume auto)" in text
    assert "Traceback" not in text
    status = exit_status(out)
    assert (status["status"], status["exit_code"], status["step"]) == ("stopped", RESUMABLE, 0)
    assert "SIGTERM" in status["reason"]
    # Nothing a run would be taken for: no config, metrics, samples or checkpoint.
    assert sorted(p.name for p in out.iterdir()) == [EXIT_STATUS_FILE, "run.lock"]
    # Nothing holds a run there: the same command starts it afresh, and so does --resume auto.
    for resume in ("no", "auto"):
        config = load_config(WGANGPConfig, [*LONG_DEBUG, "--resume", resume, "--out", str(out)], "test")
        check_run_dir(config)
        assert not resuming(config)


def test_a_process_that_hands_over_by_exec_passes_on_the_launchers_ignored_sigusr1_and_the_requests_caught():
    # node.sh starts the launcher with SIGUSR1 ignored: torchrun would die of the one srun passes on.
    ignoring = subprocess.run([sys.executable, "-c", HANDS_OVER, AFTER_THE_EXEC], cwd=ROOT, env=TRAINER_ENV,
                              capture_output=True, text=True, timeout=60, check=False,
                              preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN))
    assert ignoring.returncode == 0, ignoring.stderr
    assert ignoring.stdout.splitlines()[-2:] == ["SIGUSR1 ignored: True", "requests: ['SIGTERM']"]
