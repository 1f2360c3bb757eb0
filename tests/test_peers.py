"""train/run/peers.py: a rank that stops answering (SIGSTOP, as a wedged GPU or a stuck filesystem
would stop it) or dies mid-run ends the run: the other rank and the launcher end within
--collective-timeout plus END_MARGIN_S, one line names the lost rank, its host and the last whole
checkpoint, exit_status.json says "stopped" with exit code 75 (on which the Slurm scripts requeue
the job), and `--resume auto` continues from that checkpoint."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TWO_RANK_FLAGS, train_in_process
from tests.faults import RankFault, fault_one_rank
from train.run.checkpoint import checkpoint_step, latest_checkpoint
from train.run.outcome import RunStatus
from train.run.peers import END_MARGIN_S

TIMEOUT_S = 5  # short, so that the test is; the bound is what the test checks
BOUND_S = TIMEOUT_S + END_MARGIN_S
# Steps enough that the run is still going when it is faulted; a checkpoint every step, so that the
# fault comes after the first (and may come inside a later one).
FLAGS = [*TWO_RANK_FLAGS, "--max-steps", "200", "--ckpt-every", "1", "--collective-timeout", f"{TIMEOUT_S}s"]
FIRST_CHECKPOINT = "checkpoints/step_000001"


def judged(fault: RankFault, rank: int, cause: str, out) -> int:
    """Everything ended within the bound, and ended resumably with the one line naming `rank`;
    the last whole checkpoint's step."""
    assert fault.code is not None and not fault.left, (
        f"still running {BOUND_S:.0f} s after the fault: the launcher{', ranks ' if fault.left else ''}"
        f"{fault.left or ''}\n{fault.output[-3000:]}")
    step = checkpoint_step(latest_checkpoint(out))
    assert fault.status.get("status") == RunStatus.STOPPED.value and fault.status["exit_code"] == 75, fault.output[-3000:]
    assert fault.status["step"] == step
    lines = [line for line in fault.output.splitlines() if "stopped answering" in line]
    assert len(lines) == 1, fault.output[-3000:]
    lost = f"rank {rank} (pid {fault.pids[rank]} on {socket.gethostname()})"
    assert lines[0].startswith(f"error: {lost} stopped answering ({cause}"), lines[0]
    assert f"the last whole checkpoint is {out / 'checkpoints' / f'step_{step:06d}'} (step {step})" in lines[0]
    return step


def slurm_requeues(out: Path) -> None:
    """launch/slurm/common.sh reads the run's exit code from exit_status.json (torchrun exits 1
    whatever its ranks' codes) and requeues the job on it (scontrol stood in for by a function)."""
    script = (f'source "{ROOT}/launch/slurm/common.sh"; OUT="{out}"; MAX_RESTARTS=3; scontrol() {{ echo "scontrol $*"; }};'
              ' SLURM_JOB_ID=5 SLURM_RESTART_COUNT=0 requeue_or_exit "$(run_exit_code 1)"')
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False, env={**os.environ, "PATH": path})
    assert result.returncode == 0 and "scontrol requeue 5" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
def test_a_frozen_rank_0_ends_every_process_within_the_timeout_and_the_run_resumes_from_its_last_checkpoint(tmp_path):
    """Rank 0 holds --out's lock and would write exit_status.json: rank 1 reports, and ends it."""
    out = tmp_path / "run"
    fault = fault_one_rank(out, 0, signal.SIGSTOP, out / FIRST_CHECKPOINT, BOUND_S, FLAGS)
    step = judged(fault, 0, f"a collective timed out after --collective-timeout {TIMEOUT_S} s", out)
    slurm_requeues(out)
    resumed = train_in_process("train/wgangp.py", "--resume", "auto", "--max-steps", str(step + 1), "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {step}" in resumed.stdout


@pytest.mark.slow
def test_a_rank_killed_mid_run_ends_the_run_resumably_with_a_line_naming_it(tmp_path):
    out = tmp_path / "run"
    fault = fault_one_rank(out, 1, signal.SIGKILL, out / FIRST_CHECKPOINT, BOUND_S, FLAGS)
    judged(fault, 1, "its connection closed", out)
