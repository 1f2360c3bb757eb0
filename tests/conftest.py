import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args: str, timeout: float = 300, env: dict | None = None, launcher: list[str] | None = None):
    """Run a project script as a user would, from the repository root; returns the CompletedProcess."""
    command = [*(launcher or [sys.executable]), str(ROOT / script), *args]
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def completed(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The result of a script that must have succeeded; its stderr's tail otherwise."""
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture
def run():
    return run_script


@pytest.fixture
def own_handlers():
    """GracefulStop (and so an in-process run) leaves its signal handlers in place; this pytest
    process gets its own back."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def finished(tmp_path_factory, script: str, *args: str) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    completed(run_script(script, *args, "--out", str(out)))
    return out


# Finished runs that several test files read, made once per test session. Tests only read them.
@pytest.fixture(scope="session")
def wgangp_run(tmp_path_factory) -> Path:
    """`train/wgangp.py --debug`: 40 steps of a tiny DCGAN on synthetic images, checkpoints at 20 and 40."""
    return finished(tmp_path_factory, "train/wgangp.py", "--debug")


@pytest.fixture(scope="session")
def lightweight_run(tmp_path_factory) -> Path:
    """`train/lightweight_gan.py --debug`: 40 steps of a tiny lightweight pair, checkpoints at 20 and 40."""
    return finished(tmp_path_factory, "train/lightweight_gan.py", "--debug")


def debug_launch(target: str, *args, num_processes: int = 2, timeout: float = 240) -> None:
    """Run `module:function(*args)` on `num_processes` gloo CPU processes (accelerate's debug_launcher)
    from a fresh interpreter: the launcher forks, and a fork of a process that has already run
    OpenMP-parallel torch ops (as pytest's has, by then) can deadlock."""
    module, function = target.split(":")
    code = (
        "import sys; from accelerate import debug_launcher; "
        f"from {module} import {function}; "
        f"debug_launcher({function}, args={args!r}, num_processes={num_processes})"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]


def assert_resumed_like_whole(whole: Path, split: Path, keys: tuple[str, ...], step: int = 6) -> None:
    """A run interrupted at step 3 and resumed to `step` logged, drew and averaged exactly what the
    uninterrupted one did: losses from the first log line after the resume (windows of 2 steps),
    the final fixed-noise grid byte for byte, the EMA weights bit for bit."""
    from safetensors.torch import load_file

    from train.report.metrics import read_metrics

    expected, got = read_metrics(whole / "metrics.jsonl"), read_metrics(split / "metrics.jsonl")
    assert [r["step"] for r in got] == [2, 3, 4, 6]  # 3: the interrupted run's last line
    for line, resumed in zip(expected[1:], got[2:]):
        assert {k: resumed[k] for k in keys} == {k: line[k] for k in keys}
    final = f"samples/step_{step:06d}.png"
    assert (split / final).read_bytes() == (whole / final).read_bytes()
    ema = [load_file(run / "checkpoints" / f"step_{step:06d}" / "ema.safetensors") for run in (whole, split)]
    assert ema[0].keys() == ema[1].keys() and all(torch.equal(ema[0][k], ema[1][k]) for k in ema[0])
