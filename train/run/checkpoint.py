"""Checkpoints: accelerate's save_state plus the EMA and each rank's stream state, made atomically
and durably, checked whole before a resume.

A checkpoint is written into `step_XXXXXX.tmp/`; once every rank has written its part, the files and
the folder are fsynced, the folder is renamed to `step_XXXXXX/` and the rename is fsynced in turn.
A crash or a power loss at any moment therefore leaves the previous checkpoint as the latest whole
one, never a renamed folder of empty files. A write that fails on any rank (a full disk, most often)
fails the save on every rank: the partial folder goes, the checkpoints before it stay, and
CheckpointWriteError says what to free. A checkpoint damaged later (truncated, zeroed, a file lost)
is found before a resume and passed over for the newest whole one; nothing is ever deleted for it.
Housekeeping (--keep-checkpoints) counts whole checkpoints only: it deletes a whole one only while
as many newer whole ones stay, and moves a damaged one aside to `step_XXXXXX.damaged/` (a name no
resume reads) instead of counting or deleting it.
Everything is loaded with safetensors or torch.load(weights_only=True).
"""
import contextlib
import errno
import itertools
import os
import re
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from train.common.failpoints import Failpoints

if TYPE_CHECKING:
    from accelerate import Accelerator

    from train.run.state import TrainState

CHECKPOINTS = "checkpoints"
EMA_FILE = "ema.safetensors"
# Under fp16 with DeepSpeed, each engine's GradScaler (train.run.zero.gradient_scaler): its scale
# and growth count, which neither Accelerate nor DeepSpeed saves. The same on every rank.
ZERO_SCALERS_FILE = "zero_scalers.pt"
_NAME = re.compile(r"^step_(\d+)$")  # nothing else is a checkpoint: not .tmp, .old or .damaged
DAMAGED_SUFFIX = ".damaged"
_RANK_FILE = re.compile(r"^(?:train_state|random_states)_(\d+)\.(?:pt|pkl)$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)")  # Rust's io::Error, in safetensors' messages
# torch.save reports a full disk as a RuntimeError without an errno ("unexpected pos ..."): with
# less than this left on the filesystem once a write failed, the disk is taken to be full.
_NEARLY_FULL_BYTES = 1 << 20


def _rank_file(rank: int) -> str:
    return f"train_state_{rank}.pt"


def _random_states_file(rank: int) -> str:
    return f"random_states_{rank}.pkl"  # accelerate's RNG_STATE_NAME, one per rank


_ENGINE_FOLDER = "pytorch_model"  # accelerate's MODEL_NAME: a DeepSpeed engine's checkpoint tag


def _numbered(stem: str, index: int, suffix: str) -> str:
    return f"{stem}{f'_{index}' if index else ''}{suffix}"  # accelerate's model.safetensors, model_1.safetensors, ...


def checkpoint_step(checkpoint: Path) -> int | None:
    """The step a checkpoint folder holds (`step_000120` -> 120); None for any other name."""
    match = _NAME.match(Path(checkpoint).name)
    return int(match.group(1)) if match else None


def list_checkpoints(out: Path) -> list[Path]:
    """Checkpoints under `out` (renamed into place, so written whole), oldest first. One may have
    been damaged since: `newest_whole_checkpoint` reads them."""
    folder = Path(out) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(step, p) for p in folder.iterdir() if (step := checkpoint_step(p)) is not None and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: Path) -> Path | None:
    checkpoints = list_checkpoints(out)
    return checkpoints[-1] if checkpoints else None


def remove_partial_checkpoints(out: Path) -> None:
    """Remove what saves that died part-way left (`step_N.tmp/`, `step_N.old/`); main process only,
    at the start of a run, while it holds the run's lock. A `step_N.old/` without its `step_N/` is a
    re-save that died between its two renames: it is the whole one, and goes back to its name."""
    folder = Path(out) / CHECKPOINTS
    if folder.is_dir():
        for partial in sorted(folder.iterdir()):
            final = partial.with_suffix("")
            if partial.is_dir() and partial.suffix in (".tmp", ".old") and checkpoint_step(final) is not None:
                if partial.suffix == ".old" and not final.exists():
                    partial.rename(final)
                else:
                    shutil.rmtree(partial)


# --- saving -------------------------------------------------------------------------------------


class CheckpointWriteError(OSError):
    """A checkpoint could not be written on some rank (a full disk, most often). Raised on every rank
    once the partial folder is gone; the checkpoints before it are untouched, so the run resumes from
    the newest of them once the cause is fixed. The message names the folder, the error and the fix;
    `errno` is the failing write's (ENOSPC for a full disk) or None when it gave none; `kept_step` the
    step of the newest checkpoint left, the one a resume continues from (0: there is none)."""

    def __init__(self, message: str, error_number: int | None, folder: Path, kept_step: int = 0):
        super().__init__(error_number, message, str(folder))
        self.kept_step = kept_step

    def __str__(self) -> str:
        return self.strerror


def save_checkpoint(
    accelerator: "Accelerator", out: Path, state: "TrainState", ema_state: dict[str, torch.Tensor], keep: int
) -> Path:
    """Collective: every rank calls it. Returns the checkpoint folder; raises CheckpointWriteError on
    every rank when any rank could not write its part (nothing then waits on a rank that gave up)."""
    final = Path(out) / CHECKPOINTS / f"step_{state.step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    rank, main = accelerator.process_index, accelerator.is_main_process
    if main and tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that died part-way
    accelerator.wait_for_everyone()
    failure, failpoints = None, Failpoints.from_environment()
    try:
        accelerator.save_state(str(tmp))
        torch.save(state.state_dict(), tmp / _rank_file(rank))
        if state.step in failpoints.step_window("checkpoint_enospc"):  # test-only: the disk fills up part-way
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / EMA_FILE))
        if main:
            save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, tmp / EMA_FILE)
            _save_zero_scalers(accelerator, tmp)
        else:
            # On a filesystem shared by several nodes a rank's dirty pages are its own node's: only its
            # own fsync commits them. The main process fsyncs every file again before the rename.
            for name in (_rank_file(rank), _random_states_file(rank), "scaler.pt", *CheckpointLayout.of(accelerator).rank_files(rank)):
                if (tmp / name).is_file():
                    _fsync(tmp / name)
    except Exception as error:  # torch.save and safetensors report a full disk as RuntimeError / SafetensorError
        failure = error
    failpoints.pause("checkpoint_pause", f"with {tmp} written, before its rename", state.step)  # test-only
    _settle(accelerator, failure, final)
    if main:
        try:
            _publish(tmp, final)
        except Exception as error:
            failure = error
        else:  # one that could not be removed or moved is by the next save
            keep_newest_whole(out, CheckpointLayout.of(accelerator), keep, final)
    _settle(accelerator, failure, final)
    return final


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _publish(tmp: Path, final: Path) -> None:
    """Main process: fsync every file of `tmp`, then `tmp` itself, rename it to `final`, fsync the
    checkpoints folder. Without the fsyncs a power loss soon after the rename could keep the rename
    but not the data: a checkpoint of empty files, the newest by name."""
    for path in sorted(tmp.rglob("*"), key=lambda p: (p.is_dir(), len(p.parts), str(p))):
        _fsync(path)
    _fsync(tmp)
    if final.exists():  # the same step saved again after a resume: swap, never delete first
        stale = final.with_name(final.name + ".old")
        os.rename(final, stale)
        try:
            os.rename(tmp, final)
        except OSError:
            os.rename(stale, final)
            raise
        _fsync(final.parent)
        shutil.rmtree(stale)
    else:
        os.rename(tmp, final)
        _fsync(final.parent)


def _settle(accelerator: "Accelerator", failure: Exception | None, final: Path) -> None:
    """Collective: return when no rank failed; otherwise the main process removes the partial folder
    and every rank raises CheckpointWriteError."""
    if failure is not None:
        _close_half_written_files(failure)
    disk_full = failure is not None and _disk_full(failure, final.parent)
    flags = torch.tensor([int(failure is not None), int(disk_full)], device=accelerator.device)
    failed, any_full = (bool(count) for count in accelerator.reduce(flags, reduction="sum").tolist())
    if not failed:
        return
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()  # the folder is gone before any rank goes on
    number = _error_number(failure) if failure is not None else None
    if any_full and number not in _DISK_FULL:
        number = errno.ENOSPC
    if failure is not None and number is None:
        raise failure  # not the disk's doing (a bug, say): itself, not a resumable write error
    kept = [p for p in list_checkpoints(final.parent.parent) if p != final]
    message = _write_error_message(failure, number, final, kept[-1] if kept else None)
    raise CheckpointWriteError(message, number, tmp, checkpoint_step(kept[-1]) if kept else 0) from failure


def _close_half_written_files(error: BaseException) -> None:
    """torch.save's writer keeps its file open in the frames of the error it raised: removed, the
    half-written file would hold its space until the error is collected. Clearing the frames' locals
    closes it; the tracebacks stay printable."""
    link, seen = error, []
    while link is not None and link not in seen:
        seen.append(link)
        traceback.clear_frames(link.__traceback__)  # skips the frames still running
        link = link.__cause__ or link.__context__


def _error_number(error: BaseException) -> int | None:
    """The errno of a failed write: an OSError's, or the one safetensors puts in its text ("No space
    left on device (os error 28)"); None for torch.save, whose "unexpected pos" names none."""
    chained = [link for link in (error, error.__cause__, error.__context__) if link is not None]
    for link in chained:
        if isinstance(link, OSError) and link.errno:
            return link.errno
    for link in chained:
        if found := _OS_ERROR_TEXT.search(str(link)):
            return int(found.group(1))
    return None


def _disk_full(error: BaseException, folder: Path) -> bool:
    if _error_number(error) in _DISK_FULL:
        return True
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def _write_error_message(failure: BaseException | None, number: int | None, final: Path, kept: Path | None) -> str:
    disk_full = number in _DISK_FULL
    if failure is None:
        cause = "another rank could not write its part" + (f" ({os.strerror(number)})" if disk_full else "")
    elif isinstance(failure, OSError) and failure.errno == number:
        cause = os.strerror(number)
    elif number is not None and os.strerror(number) in str(failure):  # safetensors': the errno in its text
        cause = f"{os.strerror(number)} ({type(failure).__name__})"
    elif number is not None:  # torch.save's full disk ("unexpected pos ..."): the errno only inferred
        cause = f"{os.strerror(number)} ({type(failure).__name__}: {_first_line(failure)})"
    else:
        cause = f"{type(failure).__name__}: {_first_line(failure)}"
    folder = final.parent
    before = f"{kept.name} and the checkpoints before it are untouched" if kept else "there is no earlier checkpoint"
    # --resume is refused where there is no checkpoint: the run starts again instead.
    go_on = "continue with --resume" if kept else "start the run again (without --resume: there is no checkpoint to continue from)"
    if disk_full:
        mount = _mount_point(folder)
        size = f"; a checkpoint takes about {_megabytes(_folder_bytes(kept))}" if kept else ""
        fix = f"free space on {mount} ({_megabytes(_free_bytes(folder))} free{size}), then {go_on}"
    else:
        fix = f"check that {folder} can be written, then {go_on}"
    return f"could not write checkpoint {final}: {cause}; the partial folder was removed, {before}. To go on: {fix}"


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.0f} kB"


def _first_line(error: BaseException) -> str:
    """The library's message, its first sentence: one line however long the library's own."""
    lines = str(error).strip().splitlines()
    return lines[0].split(". ")[0][:160] if lines else type(error).__name__


# --- checking before a resume -------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointLayout:
    """The files accelerator.save_state writes (and load_state reads back) for one Accelerator:
    one model file and one optimizer file per prepared pair, schedulers, the GradScaler's under fp16.
    Under DeepSpeed (`engines`) each model is an engine that saves itself into a folder of its own:
    its whole weights once, and each rank's optimizer partition. No FSDP here."""

    models: int
    optimizers: int
    schedulers: int = 0
    scaler: bool = False
    engines: bool = False
    zero_scalers: bool = False  # fp16 under DeepSpeed: ZERO_SCALERS_FILE

    @classmethod
    def of(cls, accelerator: "Accelerator") -> "CheckpointLayout":
        from accelerate.utils import DistributedType

        # The lists load_state walks; accelerate offers no public count of them.
        engines = accelerator.distributed_type == DistributedType.DEEPSPEED
        return cls(len(accelerator._models), 0 if engines else len(accelerator._optimizers), len(accelerator._schedulers),
                   accelerator.scaler is not None and not engines, engines, bool(_zero_scalers(accelerator)))

    def shared_files(self) -> list[str]:
        if self.engines:
            models = [f"{_numbered(_ENGINE_FOLDER, i, '')}/mp_rank_00_model_states.pt" for i in range(self.models)]
        else:
            models = [_numbered("model", i, ".safetensors") for i in range(self.models)]
        return [
            *models,
            *(_numbered("optimizer", i, ".bin") for i in range(self.optimizers)),
            *(_numbered("scheduler", i, ".bin") for i in range(self.schedulers)),
            *(["scaler.pt"] if self.scaler else []),
            *([ZERO_SCALERS_FILE] if self.zero_scalers else []),
            EMA_FILE,
        ]

    def rank_files(self, rank: int) -> list[str]:
        """A rank's own files besides its train state and RNG states: its ZeRO optimizer partitions."""
        if not self.engines:
            return []
        return [f"{_numbered(_ENGINE_FOLDER, i, '')}/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for i in range(self.models)]


@dataclass(frozen=True)
class DamagedCheckpoint:
    path: Path
    reason: str  # names the file: "model_1.safetensors is missing"


def checkpoint_damage(checkpoint: Path, layout: CheckpointLayout) -> str | None:
    """Why `checkpoint` cannot be resumed from (the first file missing, empty or unreadable, by
    name), or None when it is whole. Every rank of the saving run must have left its train state
    and RNG file: the ranks are as many as train_state_0.pt records, or as the files found say.
    Safetensors headers are parsed (their offsets must cover the file exactly, so a truncated file
    fails); torch files are unpickled as weights only with their tensors memory-mapped, not read:
    cheap at any model size. Reads only."""
    checkpoint = Path(checkpoint)
    matches = filter(None, (_RANK_FILE.match(p.name) for p in checkpoint.iterdir()))
    found_ranks = 1 + max((int(m.group(1)) for m in matches), default=0)
    rank_files = [name for r in range(found_ranks) for name in (_rank_file(r), _random_states_file(r), *layout.rank_files(r))]
    for name in layout.shared_files() + rank_files:
        problem = _file_damage(checkpoint / name, trusted_pickle=layout.engines and "/" in name)
        if problem:
            return f"{name} {problem}"
    saved_ranks = _recorded_world_size(checkpoint / _rank_file(0))
    if saved_ranks > found_ranks:  # the last ranks' files all lost (a node's, say)
        return f"{_rank_file(found_ranks)} is missing (the run that saved it had {saved_ranks} processes)"
    return None


def _recorded_world_size(path: Path) -> int:
    """The number of processes a rank's train state says saved it; 0 when it does not say."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(state.get("world_size", 0)) if isinstance(state, dict) else 0


def _file_damage(path: Path, trusted_pickle: bool = False) -> str | None:
    """`trusted_pickle`: a DeepSpeed engine's file, which holds more than weights (its config, its
    version): checked as a whole archive, not unpickled; DeepSpeed's load_checkpoint reads it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if size == 0:
        return "is empty"
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt"):
                pass
        else:
            with path.open("rb") as file:
                if file.read(4) != b"PK\x03\x04":  # torch.save's zip archive
                    return "is not a torch archive (zeroed or overwritten)"
            if trusted_pickle:
                import zipfile

                with zipfile.ZipFile(path) as archive:  # the central directory sits at the end: a truncation fails here
                    archive.namelist()
                return None
            # As load_state reads it: weights only, with the numpy types of accelerate's RNG states.
            from accelerate.utils import load

            load(path, map_location="cpu", mmap=True)
    except Exception as error:  # whatever the reader raises, the file will not load
        return f"cannot be read ({_first_line(error)})"
    return None


def newest_whole_checkpoint(out: Path, layout: CheckpointLayout) -> tuple[Path | None, list[DamagedCheckpoint]]:
    """The newest whole checkpoint in `out` (None if there is none), and the newer ones passed over
    as damaged, newest first. Reads only: nothing is deleted, whatever it finds."""
    damaged = []
    for checkpoint in reversed(list_checkpoints(out)):
        reason = checkpoint_damage(checkpoint, layout)
        if reason is None:
            return checkpoint, damaged
        damaged.append(DamagedCheckpoint(checkpoint, reason))
    return None, damaged


# --- housekeeping -------------------------------------------------------------------------------


def keep_newest_whole(out: Path, layout: CheckpointLayout, keep: int, written: Path) -> None:
    """Main process, once `written` is in place: keep the `keep` newest whole checkpoints, delete the
    whole ones older than those, and move each damaged one aside. A damaged folder counted as one of
    the `keep` would cost a whole one (issue 23: an empty step_000099/ with --keep-checkpoints 1 once
    left no whole checkpoint at all). `written` is whole by construction and is not read again."""
    whole = 0
    for checkpoint in reversed(list_checkpoints(out)):
        try:
            reason = None if checkpoint == written else checkpoint_damage(checkpoint, layout)
        except OSError:  # unreadable for now (permissions, a stale handle): neither counted nor removed
            continue
        if reason is not None:
            set_aside(checkpoint, reason)
        elif whole < keep:
            whole += 1
        else:
            shutil.rmtree(checkpoint, ignore_errors=True)


def set_aside_damaged(out: Path, layout: CheckpointLayout) -> None:
    """Main process, as a resumed run starts writing: move each damaged checkpoint aside before this
    run saves a step of the same name over it (a swap that would delete it) or counts it."""
    for checkpoint in list_checkpoints(out):
        with contextlib.suppress(OSError):
            if (reason := checkpoint_damage(checkpoint, layout)) is not None:
                set_aside(checkpoint, reason)


def set_aside(checkpoint: Path, reason: str) -> Path | None:
    """Rename a damaged checkpoint to `step_XXXXXX.damaged` (`.damaged-2`, ... beside earlier ones),
    with one warning; its files stay as they are for inspection. None when the rename failed."""
    aside = checkpoint.with_name(checkpoint.name + DAMAGED_SUFFIX)
    for number in itertools.count(2):
        if not aside.exists():
            break
        aside = checkpoint.with_name(f"{checkpoint.name}{DAMAGED_SUFFIX}-{number}")
    try:
        os.rename(checkpoint, aside)
    except OSError:
        return None
    print(f"warning: checkpoint {checkpoint} is damaged ({reason}); moved aside to {aside.name} (not resumed from,"
          " not counted by --keep-checkpoints; delete it once inspected)", file=sys.stderr, flush=True)
    return aside


class NoWholeCheckpoint(ValueError):
    """Every checkpoint in --out is damaged: bad input for the runner (one `error:` line, exit code 2),
    since rerunning cannot help. The message names each damaged checkpoint and the fix."""


def agreed_whole_checkpoint(
    accelerator: "Accelerator", out: Path, going_on: str = "resuming from"
) -> tuple[Path | None, list[DamagedCheckpoint]]:
    """Collective: the newest whole checkpoint as the main process finds it, so that every rank loads
    the same one; each newer, damaged one is named on stderr ("warning: checkpoint ... is damaged
    (...); resuming from ..."). The damaged list is the main process's (empty on the others)."""
    from accelerate.utils import broadcast

    chosen, damaged, failure = None, [], None
    if accelerator.is_main_process:
        try:
            chosen, damaged = newest_whole_checkpoint(out, CheckpointLayout.of(accelerator))
        except Exception as error:  # the others must not wait for an answer that never comes
            failure = error
        for checkpoint in damaged if chosen else []:
            print(f"warning: checkpoint {checkpoint.path} is damaged ({checkpoint.reason}); {going_on} {chosen}",
                  file=sys.stderr, flush=True)
    step = -2 if failure else checkpoint_step(chosen) if chosen else -1
    step = int(broadcast(torch.tensor([step], device=accelerator.device)).item())
    if failure:
        raise failure
    if step == -2:
        raise OSError(f"the main process could not read the checkpoints in {Path(out) / CHECKPOINTS}")
    return (Path(out) / CHECKPOINTS / f"step_{step:06d}" if step >= 0 else None), damaged


def checkpoint_to_resume(accelerator: "Accelerator", out: Path) -> Path:
    """Collective: the checkpoint a resume loads, as agreed_whole_checkpoint finds it; NoWholeCheckpoint
    on every rank when none is whole (a run --resume found a checkpoint for, all of them damaged)."""
    chosen, damaged = agreed_whole_checkpoint(accelerator, out)
    if chosen is None:
        folder = Path(out) / CHECKPOINTS
        if not accelerator.is_main_process:
            raise NoWholeCheckpoint(f"--resume: no whole checkpoint in {folder} (the main process names them)")
        named = "; ".join(f"{c.path.name}: {c.reason}" for c in damaged) or "none there"
        raise NoWholeCheckpoint(
            f"--resume: no whole checkpoint in {folder} ({named}); nothing was deleted: restore the damaged"
            " files from a copy of the run, or start anew with another --out"
        )
    return chosen


# --- loading ------------------------------------------------------------------------------------


def load_weights(accelerator: "Accelerator", path: Path) -> dict[str, torch.Tensor]:
    """Restore models, optimizers, scaler(s) and RNGs in place; return the EMA state."""
    accelerator.load_state(str(path))
    _load_zero_scalers(accelerator, path)
    return load_file(path / EMA_FILE)


def _zero_scalers(accelerator: "Accelerator") -> list[torch.amp.GradScaler]:
    """The DeepSpeed engines' fp16 GradScalers, in the engines' order; none outside DeepSpeed or fp16."""
    from accelerate.utils import DistributedType

    from train.run.zero import gradient_scaler

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return []
    return [scaler for engine in accelerator._models if (scaler := gradient_scaler(engine)) is not None]


def _save_zero_scalers(accelerator: "Accelerator", folder: Path) -> None:
    """Main process: the engines' GradScaler states into `folder` (nothing outside fp16 under DeepSpeed)."""
    scalers = _zero_scalers(accelerator)
    if scalers:
        torch.save([scaler.state_dict() for scaler in scalers], Path(folder) / ZERO_SCALERS_FILE)


def _load_zero_scalers(accelerator: "Accelerator", folder: Path) -> None:
    """Every rank: the engines' GradScaler states back from `folder`, so that a resumed fp16 run
    continues at the saved scale instead of finding its level again from 2^16 (skipped updates)."""
    scalers = _zero_scalers(accelerator)
    if scalers:
        states = torch.load(Path(folder) / ZERO_SCALERS_FILE, map_location="cpu", weights_only=True)
        for scaler, saved in zip(scalers, states, strict=True):
            scaler.load_state_dict(saved)


class CheckpointMismatch(ValueError):
    """A whole checkpoint this run cannot load as it is launched: bad input (one `error:` line, exit 2)."""


def load_checkpoint(accelerator: "Accelerator", path: Path, state: "TrainState") -> dict[str, torch.Tensor]:
    """Restore models, optimizers, scaler, RNGs and this rank's train state in place; return the EMA state."""
    if CheckpointLayout.of(accelerator).engines:
        # ZeRO's optimizer states are partitioned over the ranks that saved them; DeepSpeed 0.19 does
        # not re-partition them for ZeRO-1/2 (DDP checkpoints resume on any number of processes).
        saved_ranks = _recorded_world_size(path / _rank_file(0))
        if saved_ranks != accelerator.num_processes:
            raise CheckpointMismatch(
                f"--resume: {path} was saved by {saved_ranks} DeepSpeed process{'es' if saved_ranks > 1 else ''}, each with its"
                f" part of the optimizer states; resume it on as many (this launch has {accelerator.num_processes})"
            )
    ema_state = load_weights(accelerator, path)
    rank_path = path / _rank_file(accelerator.process_index)
    if not rank_path.exists():  # more ranks than the run that saved it: rank 0's holds the run's shared state
        rank_path = path / _rank_file(0)
    state.load_state_dict(torch.load(rank_path, map_location="cpu", weights_only=True))
    return ema_state


def load_ema_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(path) / EMA_FILE)
