"""Faults a run must survive, injected at seeded-random moments (start-up, mid-step, mid-checkpoint,
shutdown): SIGKILL of every process, and stop-signal storms. Each run is resumed with
`--resume auto` until it finishes, then judged against an uninterrupted run: finished, nothing
lost beyond the last checkpoint, every checkpoint loadable, bit-identical on the CPU. A few moments
per fault here; bench/reliability.py runs ten per run for the README's figures."""
import shutil
import signal
import subprocess

import pytest

from tests.conftest import TWO_RANK_FLAGS, train_in_process
from tests.faults import (
    Figures,
    killed_and_resumed,
    spread_moments,
    run_to_end,
    whole_checkpoints_load,
)
from train.report.metrics import read_metrics

# A pause inside every checkpoint write (test-only failpoint), so that random kills hit it often.
PAUSED_CHECKPOINTS = {"FACEGAN_FAILPOINTS": "checkpoint_pause=0.4"}


def judged(figures: Figures) -> None:
    print(f"\n{figures.row()}")
    assert figures.runs_finished == figures.runs == 1, figures.notes
    assert figures.steps_lost == 0 and figures.failed_loads == 0, figures.notes
    assert figures.identical, figures.notes


@pytest.mark.slow
def test_sigkill_and_stop_signals_at_random_moments_lose_nothing_and_each_stop_leaves_a_whole_checkpoint_and_exit_75(two_rank_run, tmp_path):
    """One run of 2 processes, resumed after each fault: SIGKILL of every process, then SIGUSR1 and
    SIGTERM to the ranks (as the launchers send them), each at a seeded-random moment of its own third
    of the reference run's span (start-up, mid-run, shutdown). A stop must end with exit code 75 and a whole checkpoint of the step it
    stopped at (or a finished run); a kill may lose only what the last checkpoint had not kept.
    One process, and ten moments of each: bench/reliability.py."""
    faults = [signal.SIGKILL, signal.SIGUSR1, signal.SIGTERM]
    figures = Figures("SIGKILL, SIGUSR1, SIGTERM; 2 processes")
    killed_and_resumed(figures, two_rank_run.out, tmp_path / "run", 2, spread_moments(2, len(faults), two_rank_run.torchrun_seconds),
                       PAUSED_CHECKPOINTS, faults, flags=TWO_RANK_FLAGS)
    judged(figures)


@pytest.fixture
def small_disk(tmp_path):
    """A 7 MB tmpfs (root mounts one here), grown to 64 MB when the test asks; skipped where no mount is allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True, capture_output=True)

    yield mount, grow
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_resumably_and_it_finishes_once_space_is_back(small_disk):
    mount, grow = small_disk
    out = mount / "run"
    # Debug checkpoints take about 4.7 MB: the second one cannot be written on 7 MB.
    flags = ["--debug", "--max-steps", "8", "--ckpt-every", "2", "--sample-every", "4", "--log-every", "1"]
    first = train_in_process("train/wgangp.py", *flags, "--out", str(out))
    assert first.returncode == 75, first.stderr[-3000:]
    errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not write checkpoint" in errors[0] and "No space left on device" in errors[0]
    assert "step_000002 and the checkpoints before it are untouched" in errors[0] and "then continue with --resume" in errors[0]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000002"]
    assert whole_checkpoints_load(out) == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]  # every line parses
    assert steps == list(range(1, len(steps) + 1))
    grow()
    resumed = train_in_process("train/wgangp.py", "--resume", "--out", str(out))
    assert resumed.returncode == 0 and "resumed from step 2" in resumed.stdout, resumed.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 9))


@pytest.mark.slow
def test_a_run_goes_on_across_numbers_of_processes(two_rank_run, tmp_path):
    """The 2-process run, then 1 process, then 2 again: the weights, optimizers and step continue;
    each time the world size changes, the data is split anew and each process's share read from its start."""
    out = tmp_path / "run"
    shutil.copytree(two_rank_run.out, out)  # the session's run is read by other tests: continue a copy
    steps = len(read_metrics(out / "metrics.jsonl"))
    one = train_in_process("train/wgangp.py", "--resume", "--max-steps", str(steps + 2), "--out", str(out))
    code, output, _ = run_to_end(out, 2, "--resume", "--max-steps", str(steps + 4), flags=[])
    assert one.returncode == 0 and code == 0, (one.stderr[-3000:], output[-3000:])
    for text, resumed, processes in ((one.stdout + one.stderr, steps, "1 process"), (output, steps + 2, "2 processes")):
        assert f"resumed from step {resumed}" in text
        assert f"the checkpoint was made by another number of processes: the weights, optimizers and step continue; the data is split anew over {processes} and each share" in text
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 5))
    assert [r["world_size"] for r in records] == [2] * steps + [1, 1, 2, 2]
