"""How a run starts and ends (issue 17): unreadable data and a non-image --image-column fail at once
with one line naming the flag and leave nothing in --out; a folder without a checkpoint holds no
run; partial checkpoints are cleared; a finished run rerun says so; a process whose run has ended
still ends when it should, whatever its threads do."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch

from tests.conftest import ROOT
from tests.fixtures import FEATURES, id_image, jpeg_bytes
from tests.test_lock import TRAINER_ENV, read_line, started
from train.common.stop_signals import STOP_SIGNALS
from train.report.metrics import read_metrics
from train.run.config import load_config, save_config
from train.run.runner import main
from train.run.stop import AFTER_END_GRACE_S
from train.wgangp import WGANGPConfig, make_objective

TINY = ["--debug", "--max-steps", "2", "--sample-every", "2", "--ckpt-every", "2"]

# A run that has ended, then a thread that never does: a plain interpreter exit would wait forever.
ENDED_THEN_HANGS = """
import threading, time
from accelerate import Accelerator
from train.run.stop import GracefulStop
with GracefulStop(Accelerator(cpu=True), None):
    pass
threading.Thread(target=time.sleep, args=(3600,)).start()
print("ready", flush=True)
"""

EXIT_WITH_A_HUNG_THREAD = """
import threading, time
from train.run.runner import exit_promptly
threading.Thread(target=time.sleep, args=(3600,)).start()
print("exiting", flush=True)
exit_promptly(3, grace_s=2)
"""


pytestmark = pytest.mark.usefixtures("own_handlers")


def train(*argv: str) -> int:
    """A run in this process, on one torch thread: on a loaded 2-core machine, OpenMP threads that
    spin on each other make a debug step take seconds instead of a tenth of one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(WGANGPConfig, make_objective, "test", list(argv))
    finally:
        torch.set_num_threads(threads)


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def listing(folder: Path) -> list[str] | None:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else None


@pytest.fixture
def unreadable(tmp_path) -> Path:
    """The user's folder: its only images are a 0-byte .jpg and a text file named .jpg."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 2-step debug run, finished, with its checkpoint at step 2. Tests copy it before use."""
    out = tmp_path_factory.mktemp("finished") / "run"
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        assert train(*TINY, "--out", str(out)) == 0
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_unreadable_images_with_decoding_workers_end_the_process_at_once_naming_data(unreadable, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train/wgangp.py"), "--debug", "--data", str(unreadable), "--workers", "2",
               "--out", str(out)]
    began = time.monotonic()
    with started(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TRAINER_ENV) as run:
        try:
            stdout, stderr = run.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 90 s after an unreadable --data: the process hangs")
    assert run.returncode == 2, stderr[-4000:]
    assert time.monotonic() - began < 60
    assert " 0 decoding workers" not in stdout  # the case at hand: the error comes from a worker
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-4000:]
    assert lines[0].startswith(f"error: --data {unreadable}: not one readable image")
    assert "point --data at readable images" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "users-folder"])
def test_unreadable_images_without_workers_leave_nothing_in_out_and_a_rerun_says_the_same(unreadable, tmp_path, capsys, existing):
    out = tmp_path / "run"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    argv = ["--debug", "--data", str(unreadable), "--workers", "0", "--out", str(out)]
    assert train(*argv) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: --data {unreadable}: not one readable image") and "repair or remove those files" in line
    assert listing(out) == (["notes.txt"] if existing else None)
    # Nothing was left that would ask for --resume: the same command gives the same answer.
    assert train(*argv) == 2
    assert error_line(capsys) == line
    if existing:
        assert (out / "notes.txt").read_text() == "mine"


def test_an_image_column_that_holds_text_is_refused_naming_the_flag_and_the_image_column(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    features = datasets.Features({**FEATURES, "text": datasets.Value("string")})
    records = [{"image": {"bytes": jpeg_bytes(id_image(row)), "path": None}, "label": row, "text": f"caption {row}"}
               for row in range(16)]
    datasets.Dataset.from_list(records, features=features).to_parquet(str(shards / "train-00000.parquet"))
    capsys.readouterr()  # the writer's progress bar
    out = tmp_path / "run"
    assert train("--debug", "--data", f"parquet:{shards}/*.parquet", "--image-column", "text", "--out", str(out)) == 2
    line = error_line(capsys)
    assert line.startswith("error: --image-column text: ") and "not images; its image columns: image" in line
    assert not out.exists()


def test_a_folder_without_a_checkpoint_holds_no_run_and_a_plain_start_proceeds(tmp_path):
    # What a start that died before its first checkpoint left behind.
    out = tmp_path / "run"
    save_config(load_config(WGANGPConfig, ["--debug", "--seed", "7", "--out", str(out)], "test"), out)
    (out / "metrics.jsonl").write_text(json.dumps({"step": 5, "d_loss": 0.0}) + "\n")
    assert train(*TINY, "--out", str(out)) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [2]
    assert json.loads((out / "config.json").read_text())["seed"] == 0
    assert (out / "checkpoints" / "step_000002").is_dir()


def test_a_start_removes_checkpoints_that_a_save_left_half_made(finished_run, tmp_path):
    # A save of step 2 that died part-way (.tmp), and a re-save of it that died after the swap (.old
    # beside the whole step_000002/); the run goes on to step 3, so no save of step 2 clears them.
    out = copy_of(finished_run, tmp_path)
    whole = (out / "checkpoints" / "step_000002" / "model.safetensors").read_bytes()
    for partial in ("step_000002.tmp", "step_000002.old"):
        (out / "checkpoints" / partial).mkdir()
        (out / "checkpoints" / partial / "model.safetensors").write_bytes(b"half")
    assert train("--resume", "--max-steps", "3", "--out", str(out)) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002", "step_000003"]
    assert (out / "checkpoints" / "step_000002" / "model.safetensors").read_bytes() == whole


@pytest.mark.parametrize("resume", [["--resume"], ["--resume", "auto"]], ids=["resume", "resume-auto"])
def test_a_finished_run_rerun_with_resume_says_so_and_leaves_its_metrics_alone(finished_run, tmp_path, capsys, resume):
    out = copy_of(finished_run, tmp_path)
    metrics = out / "metrics.jsonl"
    before = (metrics.read_bytes(), metrics.stat().st_mtime_ns, metrics.stat().st_ino)
    checkpoints = listing(out / "checkpoints")
    assert train(*TINY, *resume, "--out", str(out)) == 0
    assert "already finished at step 2; raise --max-steps to go on" in capsys.readouterr().out
    assert (metrics.read_bytes(), metrics.stat().st_mtime_ns, metrics.stat().st_ino) == before
    assert listing(out / "checkpoints") == checkpoints


@pytest.mark.slow  # it waits out the stop's grace after the run's end (AFTER_END_GRACE_S): the whole suite runs it, the inner loop need not
def test_a_stop_signal_after_the_run_has_ended_ends_a_process_that_would_hang(tmp_path):
    with started([sys.executable, "-c", ENDED_THEN_HANGS], stdout=subprocess.PIPE, text=True) as process:
        assert read_line(process) == "ready"
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 15 s after SIGTERM")
        waited = time.monotonic() - signalled
        printed = process.stdout.read()
    assert process.returncode in (128 + signal.SIGTERM, -signal.SIGTERM)
    assert waited >= AFTER_END_GRACE_S - 1  # the grace is given: exit_status.json is written in it
    assert "SIGTERM received; the run has already ended; the process ends within" in printed


def test_exit_promptly_ends_with_its_code_when_a_thread_holds_up_the_interpreters_exit():
    with started([sys.executable, "-c", EXIT_WITH_A_HUNG_THREAD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True) as process:
        assert read_line(process) == "exiting"
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 10 s after exit_promptly(3, grace_s=2)")
        stderr = process.stderr.read()
    assert process.returncode == 3
    assert "exit: shutdown still not done after 2 s; ending the process" in stderr
