"""launch/notebook.py and the Kaggle and Colab notebooks: the commands they run, and both notebooks
executed top to bottom on the CPU (papermill), Kaggle's twice to continue from an attached output."""
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
import papermill
import pytest

from launch.notebook import (
    ROOT,
    Session,
    SessionError,
    colab_session,
    find_previous_run,
    kaggle_session,
    run,
    use_wandb_secret,
)
from launch.prepare_once import prepared_data
from tests.conftest import completed, train_in_process
from tests.fixtures import write_image_folder
from train.report.metrics import read_metrics

KAGGLE = ROOT / "launch" / "kaggle" / "facegan_kaggle.ipynb"
COLAB = ROOT / "launch" / "colab" / "facegan_colab.ipynb"


@pytest.fixture
def no_wandb_env(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_two_t4s_train_with_the_fp16_multi_gpu_config():
    command = Session("lightweight_gan", Path("/kaggle/working/r"), 2, "fp16", "11h30m", ["--resolution", "256"]).command()
    assert command == [
        "accelerate", "launch", "--config_file", str(ROOT / "launch/accelerate/multi_gpu_fp16.yaml"), "--num_processes", "2",
        str(ROOT / "train/lightweight_gan.py"), "--out", "/kaggle/working/r", "--resume", "auto", "--time-limit", "11h30m",
        "--resolution", "256",
    ]


def test_one_a100_trains_with_bf16_in_the_trainers_own_process_and_the_cpu_with_cpu_processes():
    a100 = Session("wgangp", Path("/o"), 1, "bf16", None, ["--batch-size", "32"]).command()
    assert a100 == [sys.executable, str(ROOT / "train/wgangp.py"), "--mixed-precision", "bf16", "--out", "/o", "--resume", "auto",
                    "--batch-size", "32"]
    cpu = Session("wgangp", Path("/o"), 2, "no", None).command()
    assert cpu[:7] == ["accelerate", "launch", "--cpu", "--mixed_precision", "no", "--num_processes", "2"]


def test_deepspeed_is_off_by_default_and_when_asked_launches_the_zero_config_without_cpu(tmp_path, capsys, no_wandb_env):
    assert kaggle_session(inputs=tmp_path / "in", working=tmp_path / "w").deepspeed is None
    session = kaggle_session("lightweight_gan", inputs=tmp_path / "in", working=tmp_path / "w", processes=2, deepspeed=2)
    assert run(session, dry_run=True) == 0
    printed = capsys.readouterr().out.splitlines()[-1].split()
    assert printed[:5] == ["accelerate", "launch", "--config_file", str(ROOT / "launch/accelerate/deepspeed_zero2.yaml"), "--num_processes"]
    assert "--cpu" not in printed and printed[printed.index("--mixed_precision") + 1] == session.precision
    colab = colab_session(drive=tmp_path / "drive", fallback=tmp_path / "c", deepspeed=1).command()
    assert str(ROOT / "launch/accelerate/deepspeed_zero1.yaml") in colab
    with pytest.raises(SessionError, match=r"deepspeed=3: use 1 or 2"):
        colab_session(drive=tmp_path / "drive", fallback=tmp_path / "c", deepspeed=3)


def test_the_wandb_key_comes_from_the_secret_into_the_environment_only(monkeypatch, no_wandb_env):
    assert use_wandb_secret(lambda name: {"WANDB_API_KEY": "k" * 40}[name]) == "online"
    assert os.environ["WANDB_API_KEY"] == "k" * 40
    monkeypatch.delenv("WANDB_API_KEY")

    def no_secret(name):
        raise KeyError(name)  # as Kaggle's client does for a secret that is not attached

    assert use_wandb_secret(no_secret) == "offline"
    assert os.environ["WANDB_MODE"] == "offline"


def test_a_bad_trainer_is_named(tmp_path):
    with pytest.raises(SessionError, match="trainer='stylegan': use one of wgangp, lightweight_gan, dcgan"):
        kaggle_session("stylegan", working=tmp_path)


def test_the_newest_attached_run_with_a_checkpoint_is_found(tmp_path):
    for version, step in (("v1", 100), ("v2", 300), ("v3", None)):
        run_dir = tmp_path / version / "run"
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "config.json").write_text("{}")
        if step:
            (run_dir / "checkpoints" / f"step_{step:06d}").mkdir()
    assert find_previous_run(tmp_path, "run") == tmp_path / "v2" / "run"
    assert find_previous_run(tmp_path / "absent", "run") is None


def test_dry_runs_print_the_command_of_each_notebook_path(tmp_path, capsys, no_wandb_env):
    kaggle = kaggle_session("wgangp", "r", ["--debug"], "11h30m", inputs=tmp_path / "in", working=tmp_path / "working")
    colab = colab_session("lightweight_gan", "r", [], None, drive=tmp_path / "drive", fallback=tmp_path / "content")
    assert run(kaggle, dry_run=True) == 0 and run(colab, dry_run=True) == 0
    printed = capsys.readouterr().out
    assert f"train/wgangp.py --mixed-precision no --out {tmp_path}/working/r --resume auto --time-limit 11h30m --debug" in printed
    assert f"train/lightweight_gan.py --mixed-precision no --out {tmp_path}/content/r --resume auto" in printed
    assert "Google Drive is not mounted" in printed
    assert not (tmp_path / "working").exists()  # a dry run touches nothing
    dcgan = kaggle_session("dcgan", "d", ["--label-jitter", "0.1"], None, inputs=tmp_path / "in", working=tmp_path / "working")
    assert run(dcgan, dry_run=True) == 0
    assert f"train/dcgan.py --mixed-precision no --out {tmp_path}/working/d --resume auto --label-jitter 0.1" in capsys.readouterr().out


def test_a_streamed_source_is_prepared_once_and_the_next_session_takes_it_from_the_attached_output(tmp_path, capsys):
    images = write_image_folder(tmp_path / "faces", 12)
    flags = ["--data", str(images), "--resolution", "32", "--celeba-crop", "8"]
    first = prepared_data("dcgan", flags, tmp_path / "s1" / "run", tmp_path / "s1", workers=0)
    folder = Path(first[-1].removeprefix("prepared:"))
    assert first[:-2] == flags and first[-2] == "--data" and folder.parent == tmp_path / "s1" / "prepared"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["count"] == 12
    assert manifest["preprocessing"] == {"resolution": 32, "celeba_crop": 8, "background": [255, 255, 255]}
    assert "preparing" in capsys.readouterr().out

    # The next Kaggle session: a new /kaggle/working, the first one's attached as an input.
    second = prepared_data("dcgan", flags, tmp_path / "s2" / "run", tmp_path / "s2", inputs=tmp_path / "s1", workers=0)
    again = Path(second[-1].removeprefix("prepared:"))
    assert again == tmp_path / "s2" / "prepared" / folder.name
    printed = capsys.readouterr().out
    assert f"continues from {folder}" in printed and "preparing" not in printed
    assert [(f.name, f.read_bytes()) for f in sorted(again.iterdir())] == [(f.name, f.read_bytes()) for f in sorted(folder.iterdir())]

    # Other decoding flags are another preparation; data that is not streamed is left as it is.
    other = prepared_data("dcgan", flags[:-2], tmp_path / "s1" / "run2", tmp_path / "s1", workers=0)
    assert Path(other[-1].removeprefix("prepared:")) != folder
    assert prepared_data("dcgan", ["--debug"], tmp_path / "s3" / "run", tmp_path / "s3") == ["--debug"]
    assert not (tmp_path / "s3").exists()


def execute(notebook: Path, output: Path, **parameters) -> str:
    """Run a notebook top to bottom in a fresh kernel; returns everything its cells printed."""
    papermill.execute_notebook(
        str(notebook), str(output), parameters={"INSTALL": False, "PROJECT_DIR": str(ROOT), **parameters},
        kernel_name="python3", progress_bar=False, cwd=str(output.parent),
    )
    cells = nbformat.read(str(output), as_version=4).cells
    return "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.get("outputs", []))


@dataclass(frozen=True)
class Printed:
    """What a notebook session's cells printed, and its folder."""

    text: str
    folder: Path


@pytest.fixture(scope="module")
def notebook_runs(tmp_path_factory) -> Iterator[dict[str, Future]]:
    """Kaggle's two sessions, one after the other, beside Colab's session: each is a kernel and a
    launch that mostly run on one thread, so on 2 cores the pair takes about the time of the longer.
    Started by the first test that asks, judged by each notebook's own test."""
    with pytest.MonkeyPatch.context() as env, ThreadPoolExecutor(2) as pool:
        env.delenv("WANDB_API_KEY", raising=False)
        env.delenv("WANDB_MODE", raising=False)
        colab = colab_before_the_disconnect(tmp_path_factory.mktemp("colab"))  # in-process: here, in the main thread
        yield {"kaggle": pool.submit(kaggle_sessions, tmp_path_factory.mktemp("kaggle")), "colab": pool.submit(colab_after_the_disconnect, colab)}


def kaggle_sessions(folder: Path) -> tuple[Printed, Printed]:
    first, second = folder / "session1", folder / "session2"
    images = str(write_image_folder(folder / "faces", 16))
    flags = ["--debug", "--data", images, "--max-steps", "400", "--log-every", "1"]
    # A limit shorter than the start-up: the session stops at its first step's end, as test_stop shows.
    printed = execute(KAGGLE, folder / "k1.ipynb", RUN_NAME="run", TRAINER_FLAGS=flags, TIME_LIMIT="1s",
                      INPUTS=str(folder / "none"), WORKING=str(first))
    stopped = json.loads((first / "run" / "exit_status.json").read_text())["step"]
    # The next session: the first one's /kaggle/working attached as an input.
    flags = ["--debug", "--data", images, "--max-steps", str(stopped + 2), "--log-every", "1"]
    again = execute(KAGGLE, folder / "k2.ipynb", RUN_NAME="run", TRAINER_FLAGS=flags, TIME_LIMIT=None,
                    INPUTS=str(folder), WORKING=str(second))
    return Printed(printed, first), Printed(again, second)


@pytest.mark.slow
def test_the_kaggle_notebook_stops_at_its_time_limit_and_the_next_session_continues_from_its_output(notebook_runs):
    first, second = notebook_runs["kaggle"].result()
    assert "no WANDB_API_KEY secret, so the run logs offline" in first.text
    assert "stopped early with a checkpoint" in first.text
    stopped = json.loads((first.folder / "run" / "exit_status.json").read_text())["step"]
    prepared = json.loads((first.folder / "run" / "config.json").read_text())["data"]
    assert "preparing" in first.text and prepared.startswith(f"prepared:{first.folder / 'prepared'}")

    assert f"continuing the run from {first.folder / 'run'}" in second.text
    assert "preparing" not in second.text and json.loads((second.folder / "run" / "config.json").read_text())["data"] == prepared
    assert f"resumed from step {stopped}" in second.text and "finished:" in second.text
    assert [r["step"] for r in read_metrics(second.folder / "run" / "metrics.jsonl")] == list(range(1, stopped + 3))


def colab_before_the_disconnect(folder: Path) -> Path:
    """The session before the disconnect: the trainer's part of the notebook's command (two steps,
    then gone), run in this process; the notebook's own start is what the second session tests."""
    drive = folder / "drive"
    drive.mkdir()
    command = colab_session("wgangp", "run", ["--debug", "--max-steps", "2"], None, drive=drive).command()
    trainer = command.index(str(ROOT / "train" / "wgangp.py"))
    completed(train_in_process("train/wgangp.py", *command[trainer + 1:]))
    return folder


def colab_after_the_disconnect(folder: Path) -> Printed:
    printed = execute(COLAB, folder / "c.ipynb", RUN_NAME="run", TIME_LIMIT=None, DRIVE=str(folder / "drive"),
                      FALLBACK=str(folder / "content"), TRAINER_FLAGS=["--debug", "--max-steps", "3"])
    return Printed(printed, folder)


@pytest.mark.slow
def test_the_colab_notebook_continues_the_run_on_drive_after_a_disconnect(notebook_runs):
    printed = notebook_runs["colab"].result()
    run_dir = printed.folder / "drive" / "facegan" / "run"
    assert "not on Colab: no Google Drive to mount" in printed.text
    assert "resumed from step 2" in printed.text and f"finished: {run_dir}" in printed.text
    assert (run_dir / "checkpoints" / "step_000003").is_dir()
