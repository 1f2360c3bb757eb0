"""train/run/checkpoint.py against the machine: a disk that really fills up, two ranks of which one
cannot write, a process killed inside the checkpoint write (the `checkpoint_pause` failpoint)."""
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from tests.conftest import ROOT
from tests.test_checkpoint import train_state
from train.run.checkpoint import (
    CheckpointLayout,
    CheckpointWriteError,
    checkpoint_damage,
    list_checkpoints,
    load_checkpoint,
    newest_whole_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
)

HANG_S = 120  # only a hang comes near it: each child below is done in seconds


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs, a few checkpoints of `save_big`. Mounting needs root (skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    # Lazily, should a failing test still hold a file there open: no mount outlives the session.
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def save_big(accelerator: Accelerator, out: Path, step: int) -> Path:
    state = train_state(seed=step)
    state.step = step
    return save_checkpoint(accelerator, out, state, {"module.weight": torch.zeros(256, 256)}, keep=100)


def test_on_a_really_full_disk_the_save_fails_cleanly_and_succeeds_once_space_is_back(small_disk):
    accelerator = Accelerator(cpu=True)
    generator, critic = nn.Linear(256, 256), nn.Linear(256, 1)  # about 1 MB a checkpoint, with Adam's state
    accelerator.prepare(generator, critic, torch.optim.Adam(generator.parameters()), torch.optim.Adam(critic.parameters()))
    out, saved = small_disk / "run", []
    with pytest.raises(CheckpointWriteError) as raised:
        for step in range(1, 20):
            saved.append(save_big(accelerator, out, step))
    failed_step = len(saved) + 1
    assert saved, "the disk is meant to hold a checkpoint or two before it is full"
    error = raised.value
    assert error.errno == errno.ENOSPC
    assert str(error).startswith(f"could not write checkpoint {out / 'checkpoints' / f'step_{failed_step:06d}'}: No space left on device")
    assert f"To go on: free space on {small_disk} (" in str(error) and str(error).endswith("then continue with --resume")
    assert list_checkpoints(out) == saved and not list((out / "checkpoints").glob("*.tmp"))
    layout = CheckpointLayout.of(accelerator)
    assert newest_whole_checkpoint(out, layout) == (saved[-1], [])
    state = train_state()
    load_checkpoint(accelerator, saved[-1], state)
    assert state.step == failed_step - 1

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space is back
    assert save_big(accelerator, out, failed_step) == newest_whole_checkpoint(out, layout)[0]


def test_a_full_disk_that_torch_save_reports_without_an_errno_is_named_a_full_disk(small_disk, tmp_path):
    # torch.save says "unexpected pos ..." (a RuntimeError) when the disk fills; what is left free tells.
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(256, 256)
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(2, 256)).sum().backward()
    optimizer.step()  # Adam's moments: optimizer.bin about twice model.safetensors
    sizes = {p.name: p.stat().st_size for p in save_big(accelerator, tmp_path / "reference", 1).iterdir()}
    out = small_disk / "run"
    (out / "checkpoints").mkdir(parents=True)
    room = sizes["model.safetensors"] + sizes["optimizer.bin"] // 2  # full halfway through optimizer.bin
    (small_disk / "filler").write_bytes(bytes(shutil.disk_usage(small_disk).free - room))
    with pytest.raises(CheckpointWriteError) as raised:
        save_big(accelerator, out, 1)
    assert isinstance(raised.value.__cause__, RuntimeError)  # from torch.save, not safetensors
    assert raised.value.errno == errno.ENOSPC
    assert "step_000001: No space left on device (RuntimeError: " in str(raised.value)
    assert f"there is no earlier checkpoint. To go on: free space on {small_disk} (" in str(raised.value)
    assert list((out / "checkpoints").iterdir()) == []
    # Its space is free again at once, though torch's writer kept the half-written file open.
    assert shutil.disk_usage(small_disk).free >= room - 2 * os.sysconf("SC_PAGE_SIZE")


def run_children(commands: list[tuple[list[str], dict[str, str]]]) -> list[subprocess.CompletedProcess]:
    """Start them all, wait for all; a child still running after HANG_S is killed and fails the test."""
    children = [
        subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for argv, env in commands
    ]
    results = []
    try:
        for child in children:
            stdout, stderr = child.communicate(timeout=HANG_S)
            results.append(subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr))
    finally:
        for child in children:
            child.kill()
    return results


# Each rank saves steps 1..5; at steps 2, 3 and 4 the ranks listed cannot write (the ENOSPC failpoint,
# set per rank). After each save every rank prints what it saw.
TWO_RANKS = """
import json, os, sys, torch
from pathlib import Path
from accelerate import Accelerator
from torch import nn
from tests.test_checkpoint import train_state
from train.common import failpoints
from train.run.checkpoint import CheckpointWriteError, save_checkpoint

out, failing = Path(sys.argv[1]), json.loads(sys.argv[2])
accelerator = Accelerator(cpu=True)
model = nn.Linear(8, 8)
model, optimizer = accelerator.prepare(model, torch.optim.Adam(model.parameters()))
for step in range(1, 6):
    os.environ.pop(failpoints.VARIABLE, None)
    if accelerator.process_index in failing.get(str(step), []):
        os.environ[failpoints.VARIABLE] = f"checkpoint_enospc={step}"
    state = train_state(seed=step)
    state.step = step
    try:
        save_checkpoint(accelerator, out, state, {"w": torch.zeros(2)}, keep=10)
        result = "saved"
    except CheckpointWriteError as error:
        result = error.errno
    print(json.dumps([step, result, sorted(p.name for p in (out / "checkpoints").iterdir())]), flush=True)
del model, optimizer  # the DDP model before the process group, as the loop's _release: else gloo can abort at exit
accelerator.free_memory()
accelerator.end_training()
"""


@pytest.mark.slow  # two rank processes: the whole suite's, not the inner loop's
def test_when_one_rank_cannot_write_every_rank_fails_the_save_and_none_waits_for_the_other(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failing = {"2": [1], "3": [0], "4": [0, 1]}  # only rank 1, only the main process, both (a full shared disk)
    rendezvous = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    ranks = run_children([
        ([sys.executable, "-c", TWO_RANKS, str(tmp_path), json.dumps(failing)], {**rendezvous, "RANK": r, "LOCAL_RANK": r})
        for r in ("0", "1")
    ])
    first = ["step_000001"]
    expected = [[1, "saved", first], [2, errno.ENOSPC, first], [3, errno.ENOSPC, first], [4, errno.ENOSPC, first],
                [5, "saved", first + ["step_000005"]]]
    for rank in ranks:
        assert rank.returncode == 0, rank.stderr
        assert [json.loads(line) for line in rank.stdout.splitlines()] == expected


# Saves step 1, then step 2, inside whose write FACEGAN_FAILPOINTS=checkpoint_pause=600@2 holds it.
PAUSED_SAVE = """
import sys, torch
from pathlib import Path
from accelerate import Accelerator
from torch import nn
from tests.test_checkpoint import train_state
from train.run.checkpoint import save_checkpoint

accelerator = Accelerator(cpu=True)
model = nn.Linear(8, 8)
accelerator.prepare(model, torch.optim.Adam(model.parameters()))
for step in (1, 2):
    state = train_state(seed=step)
    state.step = step
    save_checkpoint(accelerator, Path(sys.argv[1]), state, {"w": torch.zeros(2)}, keep=3)
"""


def test_a_process_killed_inside_the_checkpoint_write_leaves_the_one_before_it_the_latest_and_whole(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSED_SAVE, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "FACEGAN_FAILPOINTS": "checkpoint_pause=600@2"},
        cwd=ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    watchdog = threading.Timer(HANG_S, child.kill)
    watchdog.start()
    try:
        tmp = tmp_path / "checkpoints" / "step_000002.tmp"
        announced = f"failpoint checkpoint_pause: pausing 600 s with {tmp} written, before its rename\n"
        seen = []
        for line in child.stderr:  # the pause announces itself: the kill lands in the window, every time
            seen.append(line)
            if line == announced:
                child.send_signal(signal.SIGKILL)
                break
        child.wait()
    finally:
        watchdog.cancel()
        child.kill()
    assert child.returncode == -signal.SIGKILL, "".join(seen)
    written = {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "train_state_0.pt", "ema.safetensors"}
    assert {p.name for p in tmp.iterdir()} == written  # killed with every file written, before the rename
    (first,) = list_checkpoints(tmp_path)
    assert first.name == "step_000001" and checkpoint_damage(first, CheckpointLayout(models=1, optimizers=1)) is None
    remove_partial_checkpoints(tmp_path)  # what the next start does
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000001"]
