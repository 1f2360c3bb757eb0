"""Faults a run must survive, injected at seeded-random moments (start-up, mid-step, mid-checkpoint,
shutdown): SIGKILL of every process, and stop-signal storms. Each run is resumed with
`--resume auto` until it finishes, then judged against an uninterrupted run: finished, nothing
lost beyond the last checkpoint, every checkpoint loadable, bit-identical on the CPU. A few moments
per fault here; bench/reliability.py runs ten per run for the README's figures."""
import signal
import subprocess

import pytest

from tests.conftest import train_in_process
from tests.faults import (
    Figures,
    killed_and_resumed,
    moments,
    run_to_end,
    whole_checkpoints_load,
)
from train.report.metrics import read_metrics

# A pause inside every checkpoint write (test-only failpoint), so that random kills hit it often.
PAUSED_CHECKPOINTS = {"FACEGAN_FAILPOINTS": "checkpoint_pause=0.4"}


def reference(tmp_path_factory, processes: int) -> tuple:
    """An uninterrupted run, and how long it took."""
    out = tmp_path_factory.mktemp("reference") / "run"
    code, output, seconds = run_to_end(out, processes)
    assert code == 0, output[-3000:]
    return out, seconds


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return reference(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    return reference(tmp_path_factory, 2)


def judged(figures: Figures) -> None:
    print(f"\n{figures.row()}")
    assert figures.runs_finished == figures.runs == 1, figures.notes
    assert figures.steps_lost == 0 and figures.failed_loads == 0, figures.notes
    assert figures.identical, figures.notes


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2])  # 1 process: bench/reliability.py (the suite's 15-minute budget)
def test_sigkill_at_random_moments_loses_nothing(request, tmp_path, processes):
    reference_run, seconds = request.getfixturevalue({1: "one_process", 2: "two_processes"}[processes])
    figures = Figures(f"SIGKILL, {processes} process{'es' if processes > 1 else ''}")
    killed_and_resumed(figures, reference_run, tmp_path / "run", processes, moments(processes, 2, seconds), PAUSED_CHECKPOINTS)
    judged(figures)


@pytest.mark.slow
def test_stop_signals_at_random_moments_always_leave_a_whole_checkpoint_and_exit_75(two_processes, tmp_path):
    reference_run, seconds = two_processes
    figures = Figures("SIGUSR1/SIGTERM storm, 2 processes")
    storm = [signal.SIGUSR1, signal.SIGTERM]  # ten of them: bench/reliability.py
    killed_and_resumed(figures, reference_run, tmp_path / "run", 2, moments(3, len(storm), seconds), PAUSED_CHECKPOINTS, storm)
    judged(figures)


@pytest.fixture
def small_disk(tmp_path):
    """A 10 MB tmpfs (root mounts one here), grown to 64 MB when the test asks; skipped where no mount is allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mount)], capture_output=True, text=True)
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
    # Debug checkpoints take about 6 MB: the second one cannot be written on 10 MB.
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
def test_a_run_goes_on_across_numbers_of_processes(tmp_path):
    """2 processes, then 1, then 2 again: the weights, optimizers and step continue; each time the
    world size changes, the data is split anew and each process's share read from its start."""
    out = tmp_path / "run"
    flags = ["--debug", "--log-every", "1", "--ckpt-every", "2", "--sample-every", "100"]
    for processes, steps in ((2, 4), (1, 6), (2, 8)):
        extra = ["--resume"] if steps > 4 else []
        code, output, _ = run_to_end(out, processes, *flags, *extra, "--max-steps", str(steps))
        assert code == 0, output[-3000:]
        if extra:
            assert f"resumed from step {steps - 2}" in output
            assert "the checkpoint was made by another number of processes" in output
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["world_size"] for r in records] == [2, 2, 2, 2, 1, 1, 2, 2]
