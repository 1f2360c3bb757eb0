"""The fault-injection harness: runs killed or signalled at seeded-random moments, resumed with
`--resume auto` until they finish, and judged against an uninterrupted run. Used by
tests/test_reliability.py (few trials) and bench/reliability.py (the README's figures)."""
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, TORCHRUN_CPU_ENV, torchrun_cpu
from train.report.metrics import read_metrics
from train.run.checkpoint import checkpoint_step, latest_checkpoint, list_checkpoints
from train.run.outcome import EXIT_STATUS_FILE
from train.run.stop import PID_DIR_VARIABLE

TRAINER = ROOT / "train" / "wgangp.py"
# Every step logged; checkpoints often, so that kills land around them. 64 px: the README's
# Reliability figures were measured so (the --debug preset's own size is 32 px now).
RUN_FLAGS = ["--debug", "--resolution", "64", "--max-steps", "30", "--log-every", "1", "--ckpt-every", "5", "--sample-every", "10"]
# Two ranks are started by torchrun itself (what `accelerate launch --cpu` hands over to, two
# interpreter starts later: 3.6 s less a start on 2 cores); `through_accelerate` starts them as a user would.
ACCELERATE_TWO_PROCESSES = ["accelerate", "launch", "--cpu", "--num_processes", "2"]


@dataclass
class Figures:
    """One row of the README's Reliability table."""

    fault: str
    trials: int = 0
    runs_finished: int = 0
    runs: int = 0
    steps_lost: int = 0  # beyond the last whole checkpoint, summed over trials
    failed_loads: int = 0
    identical: bool | None = None
    notes: list[str] = field(default_factory=list)
    end_seconds: list[float] = field(default_factory=list)  # from each SIGSTOP until every process had ended

    def row(self) -> str:
        same = {None: "n/a", True: "yes", False: "no"}[self.identical]
        return (f"| {self.fault} | {self.trials} | {self.runs_finished}/{self.runs} | {self.steps_lost} |"
                f" {self.failed_loads} | {same} |")


def command(out: Path, processes: int, *extra: str, flags: list[str] = RUN_FLAGS, through_accelerate: bool = False) -> list[str]:
    if processes == 1:
        launcher = [sys.executable]
    elif through_accelerate:
        launcher = [str(Path(sys.executable).with_name(ACCELERATE_TWO_PROCESSES[0])), *ACCELERATE_TWO_PROCESSES[1:]]
    else:
        launcher = torchrun_cpu(processes)
    return [*launcher, str(TRAINER), *flags, *extra, "--out", str(out)]


def start(out: Path, processes: int, env: dict | None = None, *extra: str, flags: list[str] = RUN_FLAGS,
          through_accelerate: bool = False) -> subprocess.Popen:
    # Its own session, so that a kill reaches the launcher, every rank and every decoding worker.
    launcher_env = TORCHRUN_CPU_ENV if processes > 1 and not through_accelerate else {}
    return subprocess.Popen(
        command(out, processes, *extra, flags=flags, through_accelerate=through_accelerate), cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **launcher_env, **(env or {})}, start_new_session=True,
    )


def run_to_end(out: Path, processes: int, *extra: str, timeout: float = 300, flags: list[str] = RUN_FLAGS,
               through_accelerate: bool = False) -> tuple[int, str, float]:
    """Start the run (`flags`, then `extra`) and wait for it; its exit code, output and duration."""
    began = time.monotonic()
    process = start(out, processes, None, *extra, flags=flags, through_accelerate=through_accelerate)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        kill_group(process)
    return process.returncode, output, time.monotonic() - began


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """`sig` to the process and all its descendants: torchrun starts each rank in a session of its own."""
    try:
        tree = [psutil.Process(process.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(sig)


def whole_checkpoints_load(out: Path) -> int:
    """How many of the run's checkpoints fail to load (their safetensors and rank states)."""
    failed = 0
    for checkpoint in list_checkpoints(out):
        try:
            for file in checkpoint.glob("*.safetensors"):
                load_file(file)
            for file in checkpoint.glob("train_state_*.pt"):
                torch.load(file, weights_only=True)
        except Exception:
            failed += 1
    return failed


def resumed_step(output: str) -> int | None:
    match = re.search(r"resumed from step (\d+)", output)
    return int(match.group(1)) if match else None


def same_as(reference: Path, out: Path, keys=("d_loss", "g_loss", "gp", "wdist")) -> bool:
    """Final EMA weights bit for bit, and every logged loss equal, step by step."""
    final = f"step_{checkpoint_step(latest_checkpoint(reference)):06d}"
    ema_a, ema_b = load_file(reference / "checkpoints" / final / "ema.safetensors"), load_file(out / "checkpoints" / final / "ema.safetensors")
    weights = ema_a.keys() == ema_b.keys() and all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    losses_a = [{k: r[k] for k in keys} for r in read_metrics(reference / "metrics.jsonl")]
    losses_b = [{k: r[k] for k in keys} for r in read_metrics(out / "metrics.jsonl")]
    return weights and losses_a == losses_b


def killed_and_resumed(
    figures: Figures, reference: Path, out: Path, processes: int, moments: list[float], env: dict | None = None,
    signals: list[int] | None = None, timeout: float = 300, flags: list[str] = RUN_FLAGS, through_accelerate: bool = False,
) -> None:
    """Start the run with `--resume auto`, send `signals[i]` (SIGKILL by default) `moments[i]`
    seconds in, again and again, then let it finish; fold the outcome into `figures`. SIGKILL goes
    to every process; a stop signal to the training ranks, as the launchers send it; SIGSTOP to one
    rank, each in turn, and the run must then end by itself. Every start gets `flags` (the
    reference run's)."""
    deadline = time.monotonic() + timeout
    for trial, (moment, sig) in enumerate(zip(moments, signals or [signal.SIGKILL] * len(moments))):
        expected = latest_checkpoint(out)
        output = _faulted(figures, out, processes, moment, sig, trial, env, flags, deadline, through_accelerate)
        figures.trials += 1
        if sig != signal.SIGKILL:
            status = json.loads((out / EXIT_STATUS_FILE).read_text()) if (out / EXIT_STATUS_FILE).exists() else {}
            newest = latest_checkpoint(out)
            stopped_whole = status.get("status") == "finished" or (
                status.get("exit_code") == 75 and (checkpoint_step(newest) if newest else 0) == status.get("step")
            )
            if not stopped_whole:
                figures.notes.append(f"after {sig.name} at {moment} s: {status}; {output[-2000:]}")
                figures.failed_loads += 1
        resumed = resumed_step(output)
        if expected is not None and resumed is not None:
            figures.steps_lost += checkpoint_step(expected) - resumed
        if "Traceback" in output and "load" in output and resumed is None and expected is not None:
            figures.failed_loads += 1
            figures.notes.append(output[-2000:])
    expected = latest_checkpoint(out)
    code, output, _ = run_to_end(out, processes, "--resume", "auto", timeout=max(30.0, deadline - time.monotonic()), flags=flags,
                                 through_accelerate=through_accelerate)
    figures.runs += 1
    if code == 0:
        figures.runs_finished += 1
    else:
        figures.notes.append(output[-3000:])
    if expected is not None and (resumed := resumed_step(output)) is not None:
        figures.steps_lost += checkpoint_step(expected) - resumed
    figures.failed_loads += whole_checkpoints_load(out)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")] if (out / "metrics.jsonl").exists() else []
    every_step_once = steps == list(range(1, steps[-1] + 1)) if steps else False
    if not every_step_once:
        figures.notes.append(f"logged steps: {steps}")
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("step_") or p.suffix] if (out / "checkpoints").exists() else []
    if leftovers:
        figures.notes.append(f"left in checkpoints/: {leftovers}")
    identical = code == 0 and every_step_once and same_as(reference, out)
    figures.identical = identical if figures.identical is None else figures.identical and identical


def _faulted(figures: Figures, out: Path, processes: int, moment: float, sig: int, trial: int, env: dict | None,
             flags: list[str], deadline: float, through_accelerate: bool) -> str:
    """One start with `--resume auto`, `sig` sent `moment` seconds in; what it printed. After a
    SIGSTOP, the seconds until every process had ended go into `figures.end_seconds`."""
    pid_dir = out.parent / f"{out.name}-pids"
    process = start(out, processes, {**(env or {}), PID_DIR_VARIABLE: str(pid_dir)}, "--resume", "auto", flags=flags,
                    through_accelerate=through_accelerate)
    time.sleep(moment)
    signalled = []
    if sig == signal.SIGKILL:
        kill_group(process, sig)
    else:  # as the Slurm scripts do: to the training processes, once their handlers are in
        signalled = signal_ranks(pid_dir, processes, sig, process, only=trial % processes if sig == signal.SIGSTOP else None)
    began = time.monotonic()
    try:
        output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        kill_group(process)
        for pid in signalled if sig == signal.SIGSTOP else []:  # ended by the run, or orphaned: not a descendant
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    if sig == signal.SIGSTOP and signalled:
        figures.end_seconds.append(time.monotonic() - began)
    return output


def signal_ranks(pid_dir: Path, processes: int, sig: int, process: subprocess.Popen, wait: float = 120,
                 only: int | None = None) -> list[int]:
    """Send `sig` to every training rank listed in `pid_dir` (or to rank `only`), waiting for late
    starters; the pids signalled."""
    deadline, signalled = time.monotonic() + wait, []
    wanted = processes if only is None else 1
    while len(signalled) < wanted and process.poll() is None and time.monotonic() < deadline:
        for pid_file in pid_dir.glob("rank*.pid" if only is None else f"rank{only}.pid") if pid_dir.is_dir() else []:
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text())
                if pid not in signalled:
                    os.kill(pid, sig)
                    signalled.append(pid)
        time.sleep(0.05)
    return signalled


@dataclass
class RankFault:
    """How a 2-process run ended after one of its ranks was frozen (SIGSTOP) or killed (SIGKILL)."""

    code: int | None  # the launcher's exit code; None when it was still running at the bound
    output: str  # the launcher's and both ranks' stdout and stderr
    seconds: float  # from the signal until the launcher and both ranks had ended (or the bound)
    pids: list[int]  # the ranks', by rank
    left: list[int]  # those still running at the bound
    status: dict  # exit_status.json; {} where there is none


def fault_one_rank(out: Path, rank: int, sig: int, after: Path, bound: float, flags: list[str], *extra: str,
                   wait: float = 120) -> RankFault:
    """Start a 2-process run, send `sig` to rank `rank` once the path `after` exists (a checkpoint,
    say) and both ranks have written their pids, then wait up to `bound` seconds for the launcher and
    both ranks to end; whatever is still running then is killed."""
    pid_dir = out.parent / f"{out.name}-pids"
    # torchrun itself (accelerate launch --cpu hands over to it, then prints the ranks' stderr again).
    process = subprocess.Popen(
        [*torchrun_cpu(2), str(TRAINER), *flags, *extra, "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **TORCHRUN_CPU_ENV, PID_DIR_VARIABLE: str(pid_dir)},
    )
    ranks: list[psutil.Process] = []
    output = None
    try:
        deadline = time.monotonic() + wait
        while not (after.exists() and len(list(pid_dir.glob("rank*.pid"))) == 2) and process.poll() is None:
            assert time.monotonic() < deadline, f"no {after} after {wait:.0f} s"
            time.sleep(0.05)
        ranks = [psutil.Process(int((pid_dir / f"rank{r}.pid").read_text())) for r in range(2)]
        ranks[rank].send_signal(sig)
        began = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            output, _ = process.communicate(timeout=bound)  # once every holder of its output pipe has ended
        while any(map(_running, ranks)) and time.monotonic() < began + bound:
            time.sleep(0.05)
        seconds, left = time.monotonic() - began, [p.pid for p in ranks if _running(p)]
    finally:
        kill_group(process)
        for member in ranks:  # an orphaned rank is not the launcher's descendant any more
            with contextlib.suppress(psutil.Error):
                member.kill()
    if output is None:
        output, _ = process.communicate()
    status = json.loads((out / EXIT_STATUS_FILE).read_text()) if (out / EXIT_STATUS_FILE).exists() else {}
    return RankFault(process.returncode, output, seconds, [p.pid for p in ranks], left, status)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def moments(seed: int, count: int, span: float) -> list[float]:
    """`count` seeded-random moments in (0, span): from start-up to shutdown."""
    rng = random.Random(seed)
    return [round(rng.uniform(0.3, span), 2) for _ in range(count)]


def spread_moments(seed: int, count: int, span: float) -> list[float]:
    """One seeded-random moment in each of `count` equal parts of (0.3, span), in turn: with few
    moments, start-up, mid-run and shutdown are each hit (independent draws may all fall at one end)."""
    rng, part = random.Random(seed), (span - 0.3) / count
    return [round(0.3 + part * (i + rng.random()), 2) for i in range(count)]
