"""train/run/checkpoint.py: atomic, durable, pruned, safely loadable checkpoints; damaged ones passed
over on resume; a save that cannot be written removed whole, on every rank."""
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from tests.conftest import train_in_process
from train.common import failpoints
from train.data import DataOptions, open_stream, parse_data_spec
from train.gan.objectives import WGANGP
from train.report.metrics import StatWindow
from train.report.monitor import CollapseMonitor, CollapseThresholds
from train.run.checkpoint import (
    CheckpointLayout,
    CheckpointWriteError,
    DamagedCheckpoint,
    NoWholeCheckpoint,
    checkpoint_damage,
    checkpoint_to_resume,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    newest_whole_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
)
from train.run.state import TrainState


def setup():
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def train_state(seed: int = 0, run_id: str = "abcd1234") -> TrainState:
    toy = DataOptions(parse_data_spec("toy:8gaussians"), resolution=64)
    return TrainState(
        latent_rng=torch.Generator().manual_seed(seed),
        stream=open_stream(toy, batch_size=4, seed=seed, rank=0, world_size=1),
        window=StatWindow(),
        objective=WGANGP(),
        monitor=CollapseMonitor(CollapseThresholds()),
        run_id=run_id,
    )


def save(accelerator, out, step, keep=3):
    state = train_state(seed=step)
    state.step, state.skipped_steps = step, 2
    state.window.add({"d_loss": torch.tensor(float(step))})
    return save_checkpoint(accelerator, out, state, {"module.weight": torch.full((2,), float(step))}, keep)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    accelerator, _, _ = setup()
    for step in (10, 20, 30, 40):
        save(accelerator, tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000030", "step_000040"]


def test_a_half_written_checkpoint_is_never_the_latest(tmp_path):
    accelerator, _, _ = setup()
    save(accelerator, tmp_path, 10)
    broken = tmp_path / "checkpoints" / "step_000020.tmp"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"truncated")
    assert latest_checkpoint(tmp_path).name == "step_000010"
    save(accelerator, tmp_path, 20)  # the next save at that step replaces the leftover
    assert latest_checkpoint(tmp_path).name == "step_000020"
    assert not broken.exists()


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    accelerator, _, _ = setup()
    save(accelerator, tmp_path, 10)
    save(accelerator, tmp_path, 10)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000010"]


def test_load_restores_weights_optimizer_and_rank_state(tmp_path):
    accelerator, model, optimizer = setup()
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    path = save(accelerator, tmp_path, 7)
    with torch.no_grad():
        model.weight.zero_()
    state = train_state(seed=0, run_id="other")
    ema_state = load_checkpoint(accelerator, path, state)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key])
    assert optimizer.state_dict()["state"][0]["step"].item() == 1
    assert (state.step, state.skipped_steps, state.run_id) == (7, 2, "abcd1234")
    saved = train_state(seed=7)  # the streams continue where the saved ones were
    assert torch.equal(state.latent_rng.get_state(), saved.latent_rng.get_state())
    assert torch.equal(next(state.stream), next(saved.stream))
    assert state.window.counts == {"d_loss": 1} and state.window.sums["d_loss"].item() == 7.0
    torch.testing.assert_close(ema_state["module.weight"], torch.full((2,), 7.0))


def test_resumed_on_another_number_of_processes_the_run_goes_on_and_the_streams_start_afresh(tmp_path):
    saved = train_state(seed=9)
    saved.step, saved.skipped_steps, saved.rollbacks, saved.world_size = 9, 4, 1, 2  # made by 2 processes
    saved.window.add({"d_loss": torch.tensor(3.0)})
    next(saved.stream)
    state = train_state(seed=1, run_id="fresh")  # one process now
    state.load_state_dict(saved.state_dict())
    assert not state.restored_streams
    assert (state.step, state.skipped_steps, state.rollbacks, state.run_id) == (9, 4, 1, "abcd1234")
    assert torch.equal(next(state.stream), next(train_state(seed=1).stream))  # its own share, from its start
    assert state.window.counts == {}

    same = train_state(seed=1)
    saved.world_size = 1
    same.load_state_dict(saved.state_dict())
    assert same.restored_streams and same.window.counts == {"d_loss": 1}


def test_a_resave_that_died_between_its_two_renames_gets_the_old_checkpoint_back(tmp_path):
    accelerator, _, _ = setup()
    path = save(accelerator, tmp_path, 10)
    path.rename(path.with_name("step_000010.old"))  # killed after moving the old one aside...
    (tmp_path / "checkpoints" / "step_000010.tmp").mkdir()  # ...before the new one took its name
    remove_partial_checkpoints(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000010"]
    load_checkpoint(accelerator, path, train_state())


# Durability: files, then their folder, fsynced before the rename; the rename fsynced after it.


def setup_pair():
    """Two models and two optimizers, as the loop prepares them: model_1.safetensors, optimizer_1.bin.
    Big enough that half a file ends past the header, in the tensors."""
    accelerator = Accelerator(cpu=True)
    generator, critic = nn.Linear(64, 64), nn.Linear(64, 1)
    g_opt, d_opt = torch.optim.Adam(generator.parameters()), torch.optim.Adam(critic.parameters())
    accelerator.prepare(generator, critic, g_opt, d_opt)
    return accelerator


ONE_RANK_FILES = {
    "model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin",
    "random_states_0.pkl", "train_state_0.pt", "ema.safetensors",
}


def test_every_file_then_the_folder_is_fsynced_before_the_rename_and_the_rename_after_it(tmp_path, monkeypatch):
    accelerator = setup_pair()
    events, real_fsync, real_rename = [], os.fsync, os.rename

    def fsync(descriptor):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{descriptor}"))))
        real_fsync(descriptor)

    def rename(source, target, **kwargs):
        events.append(("rename", Path(source).resolve(), Path(target).resolve()))
        real_rename(source, target, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    final = save(accelerator, tmp_path, 10).resolve()
    tmp = final.with_name("step_000010.tmp")
    assert {p.name for p in final.iterdir()} == ONE_RANK_FILES
    renames = [i for i, event in enumerate(events) if event[0] == "rename"]
    assert [events[i] for i in renames] == [("rename", tmp, final)]
    before, after = events[: renames[0]], events[renames[0] + 1 :]
    assert {path.name for _, path in before[:-1]} == ONE_RANK_FILES  # every file, each in the folder
    assert all(path.parent == tmp for _, path in before[:-1])
    assert before[-1] == ("fsync", tmp) and after == [("fsync", final.parent)]

    events.clear()  # the same step again: the old one is swapped out only by durable renames
    save(accelerator, tmp_path, 10)
    stale = final.with_name("step_000010.old")
    assert [e for e in events if e[0] == "rename"] == [("rename", final, stale), ("rename", tmp, final)]
    assert events[-1] == ("fsync", final.parent) and events[-4] == ("fsync", tmp)
    assert not stale.exists()


# Damaged checkpoints: the newest whole one is resumed; the damaged one is named and kept.


def halve(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def empty(path: Path) -> None:
    path.write_bytes(b"")


def delete(path: Path) -> None:
    path.unlink()


def files_and_sizes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}


# (file, damage, the reason checkpoint_damage gives): a file truncated, zeroed, emptied or lost.
FILE_DAMAGE = [
    ("model.safetensors", halve, "cannot be read (Error while deserializing header: incomplete metadata"),
    ("ema.safetensors", zero, "cannot be read (Error while deserializing header"),
    ("train_state_0.pt", delete, "is missing"),
    ("model_1.safetensors", delete, "is missing"),
    ("optimizer.bin", halve, "cannot be read (PytorchStreamReader failed reading zip archive"),
    ("random_states_0.pkl", zero, "is not a torch archive"),
    ("optimizer_1.bin", empty, "is empty"),
]


@pytest.mark.parametrize("name, damage, reason", FILE_DAMAGE)
def test_a_damaged_latest_checkpoint_is_named_and_the_one_before_it_is_resumed(tmp_path, capsys, name, damage, reason):
    accelerator = setup_pair()
    older, latest = save(accelerator, tmp_path, 10), save(accelerator, tmp_path, 20)
    assert checkpoint_damage(latest, CheckpointLayout.of(accelerator)) is None
    damage(latest / name)
    listing = files_and_sizes(tmp_path)
    chosen, damaged = newest_whole_checkpoint(tmp_path, CheckpointLayout.of(accelerator))
    assert chosen == older and [d.path for d in damaged] == [latest]
    assert damaged[0].reason.startswith(f"{name} {reason}")
    assert checkpoint_to_resume(accelerator, tmp_path) == older
    warning = f"warning: checkpoint {latest} is damaged ({damaged[0].reason}); resuming from {older}\n"
    assert capsys.readouterr().err == warning
    state = train_state(seed=0, run_id="other")
    load_checkpoint(accelerator, older, state)
    assert state.step == 10
    assert files_and_sizes(tmp_path) == listing  # the damaged checkpoint is kept as it was


def test_a_rank_whose_train_state_is_there_but_not_its_random_states_makes_the_checkpoint_damaged(tmp_path):
    accelerator = setup_pair()
    path = save(accelerator, tmp_path, 10)
    (path / "train_state_1.pt").write_bytes((path / "train_state_0.pt").read_bytes())  # a second rank's
    assert checkpoint_damage(path, CheckpointLayout.of(accelerator)) == "random_states_1.pkl is missing"


def test_a_checkpoint_without_the_files_of_ranks_its_train_state_records_is_damaged(tmp_path):
    accelerator = setup_pair()
    path = save(accelerator, tmp_path, 10)
    saved = torch.load(path / "train_state_0.pt", weights_only=True)
    torch.save({**saved, "world_size": 3}, path / "train_state_0.pt")  # rank 0 of three; ranks 1 and 2 lost
    layout = CheckpointLayout.of(accelerator)
    assert checkpoint_damage(path, layout) == "train_state_1.pt is missing (the run that saved it had 3 processes)"
    torch.save({**saved, "world_size": 1}, path / "train_state_0.pt")
    assert checkpoint_damage(path, layout) is None


def test_with_no_whole_checkpoint_a_resume_is_refused_naming_each_and_nothing_is_deleted(tmp_path, capsys):
    accelerator = setup_pair()
    older, latest = save(accelerator, tmp_path, 10), save(accelerator, tmp_path, 20)
    halve(latest / "model.safetensors")
    delete(older / "ema.safetensors")
    listing = files_and_sizes(tmp_path)
    assert newest_whole_checkpoint(tmp_path, CheckpointLayout.of(accelerator)) == (None, [
        DamagedCheckpoint(latest, checkpoint_damage(latest, CheckpointLayout.of(accelerator))),
        DamagedCheckpoint(older, "ema.safetensors is missing"),
    ])
    with pytest.raises(NoWholeCheckpoint) as raised:
        checkpoint_to_resume(accelerator, tmp_path)
    message = str(raised.value)
    assert message.startswith(f"--resume: no whole checkpoint in {tmp_path / 'checkpoints'} (step_000020: model.safetensors cannot be read")
    assert "; step_000010: ema.safetensors is missing)" in message
    assert message.endswith("nothing was deleted: restore the damaged files from a copy of the run, or start anew with another --out")
    assert "\n" not in message and capsys.readouterr().err == ""  # the runner's one error line says it all
    assert files_and_sizes(tmp_path) == listing


# Housekeeping: --keep-checkpoints counts whole checkpoints only; a damaged one is moved aside, never deleted.


def emptied(checkpoint: Path) -> None:
    """An empty folder of a checkpoint's name (a copy that never happened, files deleted by hand)."""
    for path in checkpoint.iterdir():
        path.unlink()


def with_a_rank_half_there(checkpoint: Path) -> None:
    """A second rank's train state without its random states."""
    (checkpoint / "train_state_1.pt").write_bytes((checkpoint / "train_state_0.pt").read_bytes())


def without_its_other_ranks(checkpoint: Path) -> None:
    """Rank 0 of three; the other ranks' files lost (a node's, say)."""
    saved = torch.load(checkpoint / "train_state_0.pt", weights_only=True)
    torch.save({**saved, "world_size": 3}, checkpoint / "train_state_0.pt")


def file_damaged(name: str, damage) -> Callable[[Path], None]:
    return lambda checkpoint: damage(checkpoint / name)


FOLDER_DAMAGE = {
    **{f"{name} {damage.__name__}": file_damaged(name, damage) for name, damage, _ in FILE_DAMAGE},
    "an empty folder": emptied,
    "a rank's random states missing": with_a_rank_half_there,
    "the other ranks' files missing": without_its_other_ranks,
}


@pytest.mark.parametrize("damage", FOLDER_DAMAGE.values(), ids=FOLDER_DAMAGE.keys())
def test_housekeeping_keeps_the_newest_whole_checkpoints_and_moves_each_damaged_one_aside(tmp_path, capsys, damage):
    accelerator = setup_pair()
    older, damaged = save(accelerator, tmp_path, 20), save(accelerator, tmp_path, 99)
    damage(damaged)
    reason = checkpoint_damage(damaged, CheckpointLayout.of(accelerator))
    assert reason is not None
    listing = {name.replace("step_000099", "step_000099.damaged"): size for name, size in files_and_sizes(tmp_path).items()
               if "step_000020" not in name}
    capsys.readouterr()

    newest = save(accelerator, tmp_path, 25, keep=1)  # a resume from step 20 goes on below the damaged one

    assert list_checkpoints(tmp_path) == [newest] and not older.exists()  # the damaged one not counted
    aside = tmp_path / "checkpoints" / "step_000099.damaged"
    assert {k: v for k, v in files_and_sizes(tmp_path).items() if "step_000025" not in k} == listing  # moved, not changed
    assert capsys.readouterr().err == (f"warning: checkpoint {damaged} is damaged ({reason}); moved aside to {aside.name}"
                                       " (not resumed from, not counted by --keep-checkpoints; delete it once inspected)\n")
    assert newest_whole_checkpoint(tmp_path, CheckpointLayout.of(accelerator)) == (newest, [])
    remove_partial_checkpoints(tmp_path)  # what a start does: the folder set aside is not a partial save
    assert aside.is_dir()


def test_an_empty_checkpoint_folder_with_keep_1_costs_no_whole_checkpoint(tmp_path, capsys):
    """The issue's case: an empty step_000099/ and --keep-checkpoints 1 once deleted every whole checkpoint."""
    accelerator = setup_pair()
    save(accelerator, tmp_path, 20)
    (tmp_path / "checkpoints" / "step_000099").mkdir()
    newest = save(accelerator, tmp_path, 25, keep=1)
    assert list_checkpoints(tmp_path) == [newest]
    assert checkpoint_to_resume(accelerator, tmp_path) == newest
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000025", "step_000099.damaged"]
    newer = save(accelerator, tmp_path, 30, keep=1)  # a folder already set aside is left alone
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000030", "step_000099.damaged"]
    assert checkpoint_to_resume(accelerator, tmp_path) == newer
    (tmp_path / "checkpoints" / "step_000099").mkdir()  # damaged again: set aside beside the first, not over it
    save(accelerator, tmp_path, 35, keep=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_000035", "step_000099.damaged", "step_000099.damaged-2"]
    assert capsys.readouterr().err.count("warning: checkpoint") == 2


def test_a_resume_sets_damaged_checkpoints_aside_before_it_saves_and_keeps_its_whole_ones(wgangp_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(wgangp_run, out)  # checkpoints at 20 and 40; the session's run is read by other tests
    folder = out / "checkpoints"
    (folder / "step_000099").mkdir()  # the empty folder
    shutil.copytree(folder / "step_000040", folder / "step_000041")
    halve(folder / "step_000041" / "model.safetensors")  # damaged, at the step this resume saves
    damaged_bytes = (folder / "step_000041" / "model.safetensors").read_bytes()

    resumed = train_in_process("train/wgangp.py", "--resume", "--keep-checkpoints", "1", "--max-steps", "41", "--out", str(out))

    assert resumed.returncode == 0 and "resumed from step 40" in resumed.stdout, resumed.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["step_000041", "step_000041.damaged", "step_000099.damaged"]
    assert (folder / "step_000041.damaged" / "model.safetensors").read_bytes() == damaged_bytes
    moved = [line for line in resumed.stderr.splitlines() if "moved aside to" in line]
    assert len(moved) == 2 and "step_000099 is damaged (model.safetensors is missing)" in moved[1]
    assert checkpoint_damage(folder / "step_000041", CheckpointLayout(models=2, optimizers=2)) is None


# A save that cannot be written: gone whole, the one before it kept, CheckpointWriteError.


def test_a_full_disk_fails_the_save_removes_its_folder_and_keeps_the_checkpoint_before_it(tmp_path, monkeypatch):
    accelerator = setup_pair()
    older = save(accelerator, tmp_path, 10)
    monkeypatch.setenv(failpoints.VARIABLE, "checkpoint_enospc=20")
    with pytest.raises(CheckpointWriteError) as raised:
        save(accelerator, tmp_path, 20)
    error, folder = raised.value, tmp_path / "checkpoints"
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    message = str(error)
    assert message.startswith(f"could not write checkpoint {folder / 'step_000020'}: No space left on device; the partial"
                              " folder was removed, step_000010 and the checkpoints before it are untouched. To go on:"
                              " free space on /")
    assert " free; a checkpoint takes about " in message and message.endswith("), then continue with --resume")
    assert [p.name for p in folder.iterdir()] == ["step_000010"]  # no step_000020.tmp left
    assert newest_whole_checkpoint(tmp_path, CheckpointLayout.of(accelerator)) == (older, [])
    load_checkpoint(accelerator, older, train_state())

    monkeypatch.delenv(failpoints.VARIABLE)  # space is back
    assert save(accelerator, tmp_path, 20) == latest_checkpoint(tmp_path)


def test_a_failing_fsync_fails_the_save_like_a_failing_write(tmp_path, monkeypatch):
    # Where writes are cached (NFS, ext4's delayed allocation) a full disk or a lost device shows at fsync.
    accelerator = setup_pair()
    save(accelerator, tmp_path, 10)

    def fsync(descriptor):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(CheckpointWriteError) as raised:
        save(accelerator, tmp_path, 20)
    assert raised.value.errno == errno.EIO
    folder = tmp_path / "checkpoints"
    assert str(raised.value) == (
        f"could not write checkpoint {folder / 'step_000020'}: Input/output error; the partial folder was removed,"
        f" step_000010 and the checkpoints before it are untouched. To go on: check that {folder} can be written,"
        " then continue with --resume"
    )
    assert [p.name for p in folder.iterdir()] == ["step_000010"]


def test_a_save_failing_for_another_reason_than_the_disk_raises_that_error_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    accelerator = setup_pair()
    save(accelerator, tmp_path, 10)

    def broken_save_file(tensors, path):
        raise TypeError("a bug, not the disk")

    monkeypatch.setattr("train.run.checkpoint.save_file", broken_save_file)
    with pytest.raises(TypeError, match="a bug, not the disk"):  # no resumable exit for a bug
        save(accelerator, tmp_path, 20)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000010"]
