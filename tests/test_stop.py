"""train/run/stop.py: SIGUSR1, SIGTERM and --time-limit stop every rank at the same step, with a whole
checkpoint and the resumable exit code."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from tests.conftest import ROOT
from tests.wandb_records import offline_runs, read_run
from train.report.metrics import read_metrics
from train.run.checkpoint import list_checkpoints
from train.run.outcome import RunStatus
from train.run.runner import main
from train.run.stop import AFTER_END_GRACE_S, GracefulStop, parse_duration
from train.wgangp import WGANGPConfig, make_objective

RESUMABLE = RunStatus.STOPPED.exit_code
# Long enough that no run here reaches it; log every step so that "every step once" can be checked.
LONG_DEBUG = ["--debug", "--max-steps", "400", "--log-every", "1", "--sample-every", "1000", "--ckpt-every", "1000"]


@pytest.mark.parametrize(
    "text, seconds",
    [("11h30m", 41400), ("45m", 2700), ("90s", 90), ("1d2h", 93600), ("5400", 5400), ("11:30:00", 41400), ("1h0m5s", 3605)],
)
def test_durations_read_as_a_person_writes_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "11x", "h", "1.5h", "-5", "1:2", "0", "0h0m"])
def test_unreadable_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["1:99:99", "1:30:60", "2h60m", "1d24h", "5m75s"])
def test_fields_after_the_first_must_be_in_their_units_range(text):
    with pytest.raises(ValueError, match="out of range for its unit"):
        parse_duration(text)
    assert parse_duration("36:00:00") == parse_duration("90m") * 24  # the first field may be any size


@pytest.mark.parametrize("text, reason", [("11x", "'11x' is not a duration"), ("1:99:99", "99 is out of range")])
def test_a_bad_time_limit_is_refused_before_anything_is_written(tmp_path, capsys, text, reason):
    assert main(WGANGPConfig, make_objective, "test", ["--debug", "--out", str(tmp_path / "run"), "--time-limit", text]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --time-limit {text}: {reason}") and "give a duration such as 11h30m" in error
    assert not (tmp_path / "run").exists()


def test_a_second_signal_changes_nothing_and_one_after_the_run_ends_the_process_only_later(own_handlers, capsys):
    with GracefulStop(Accelerator(cpu=True), time_limit_s=None) as stop:
        assert stop.agreed() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.agreed() == "SIGUSR1"
    assert stop.exit_timers == []
    os.kill(os.getpid(), signal.SIGTERM)
    # Armed, not fired: this process (pytest) would end 5 s from now (tests/test_startup.py lets it).
    assert [t.interval for t in stop.exit_timers] == [AFTER_END_GRACE_S] and stop.exit_timers[0].is_alive()
    stop.exit_timers[0].cancel()
    printed = capsys.readouterr().out
    assert "rank 0: SIGUSR1 received; stopping after this step with a checkpoint" in printed
    assert "rank 0: SIGTERM received; a stop is already under way" in printed
    assert "rank 0: SIGTERM received; the run has already ended; the process ends within 5 s" in printed


def test_the_time_limit_counts_from_the_process_start(own_handlers):
    # This pytest process started more than a second ago.
    with GracefulStop(Accelerator(cpu=True), time_limit_s=1) as stop:
        assert stop.agreed() == "--time-limit"
    with GracefulStop(Accelerator(cpu=True), time_limit_s=3600) as stop:
        assert stop.agreed() is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(out: Path, *flags: str, world: int = 2) -> tuple[list[subprocess.Popen], Path]:
    """`world` gloo processes of the debug trainer, started as srun starts one task per rank."""
    port, pid_dir = _free_port(), out.parent / f"{out.name}.pids"
    ranks = []
    for rank in range(world):
        env = {
            **os.environ, "PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "FACEGAN_PID_DIR": str(pid_dir),
        }
        command = [sys.executable, str(ROOT / "train/wgangp.py"), "--out", str(out), *flags]
        ranks.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return ranks, pid_dir


def wait_for(condition, what: str, ranks: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if any(r.poll() is not None for r in ranks) or time.monotonic() > deadline:
            for r in ranks:
                r.kill()
            pytest.fail(f"never saw {what}:\n" + "\n".join(r.communicate()[0][-3000:] for r in ranks))
        time.sleep(0.05)


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [r["step"] for r in read_metrics(path)] if path.exists() else []


def finish(ranks: list[subprocess.Popen]) -> list[tuple[int, str]]:
    return [(r.wait(timeout=120), r.communicate()[0]) for r in ranks]


def assert_stopped_together(out: Path, ends: list[tuple[int, str]], reason: str) -> int:
    assert [code for code, _ in ends] == [RESUMABLE, RESUMABLE], "\n".join(text[-3000:] for _, text in ends)
    status = json.loads((out / "exit_status.json").read_text())
    assert status["exit_code"] == RESUMABLE and status["status"] == "stopped" and reason in status["reason"]
    step = status["step"]
    assert f"stopped at step {step}: {reason}" in ends[0][1]
    (checkpoint,) = list_checkpoints(out)  # whole, and the only one: no .tmp left behind
    assert checkpoint.name == f"step_{step:06d}"
    assert not list((out / "checkpoints").glob("*.tmp"))
    saved = [torch.load(checkpoint / f"train_state_{rank}.pt", weights_only=True)["step"] for rank in (0, 1)]
    assert saved == [step, step]
    assert logged_steps(out) == list(range(1, step + 1))
    return step


@pytest.mark.slow  # a torchrun pair: the whole suite's, not the inner loop's
def test_sigusr1_to_one_rank_stops_both_at_the_same_step_and_a_second_signal_corrupts_nothing(tmp_path):
    out = tmp_path / "run"
    ranks, pid_dir = start_ranks(out, *LONG_DEBUG)
    wait_for(lambda: len(logged_steps(out)) >= 3, "three logged steps", ranks)
    rank1 = int((pid_dir / "rank1.pid").read_text())
    assert rank1 == ranks[1].pid
    os.kill(rank1, signal.SIGUSR1)  # only rank 1 hears it: the stop must still be agreed by both
    # A second signal to each rank while the checkpoint is written.
    wait_for(lambda: (out / "checkpoints").exists(), "the checkpoint folder", ranks)
    for r in ranks:
        r.send_signal(signal.SIGTERM)
    ends = finish(ranks)
    assert_stopped_together(out, ends, "a stop signal on another rank")
    assert "rank 1: SIGUSR1 received; stopping after this step" in ends[1][1]
    assert not list(pid_dir.glob("*.pid"))  # each rank removed its own
    # Resuming from such a checkpoint on two ranks: tests/test_slurm.py, the multi-node job.


@pytest.mark.slow  # a torchrun pair: the whole suite's, not the inner loop's
def test_time_limit_stops_both_ranks_at_the_same_step_and_marks_the_wandb_run_preempted(tmp_path):
    out = tmp_path / "run"
    ranks, _ = start_ranks(out, *LONG_DEBUG, "--time-limit", "1s", "--wandb-mode", "offline")  # over by the first step's end
    assert assert_stopped_together(out, finish(ranks), "--time-limit") == 1
    (wandb_run,) = offline_runs(out)
    assert read_run(wandb_run)["preempting"]
