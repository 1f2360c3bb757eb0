"""Checkpoints: accelerate's save_state plus the EMA and each rank's stream state, made atomically.

A checkpoint is written into `step_XXXXXX.tmp/` and renamed to `step_XXXXXX/` only once every rank
has finished writing, so a crash mid-save leaves the previous checkpoint as the latest whole one.
Everything is loaded with safetensors or torch.load(weights_only=True).
"""
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from accelerate import Accelerator

    from train.run.state import TrainState

CHECKPOINTS = "checkpoints"
EMA_FILE = "ema.safetensors"
_NAME = re.compile(r"^step_(\d+)$")


def _rank_file(rank: int) -> str:
    return f"train_state_{rank}.pt"


def checkpoint_step(checkpoint: Path) -> int | None:
    """The step a checkpoint folder holds (`step_000120` -> 120); None for any other name."""
    match = _NAME.match(Path(checkpoint).name)
    return int(match.group(1)) if match else None


def list_checkpoints(out: Path) -> list[Path]:
    """Whole checkpoints under `out`, oldest first."""
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
    at the start of a run, while it holds the run's lock."""
    folder = Path(out) / CHECKPOINTS
    if folder.is_dir():
        for partial in folder.iterdir():
            if partial.is_dir() and partial.suffix in (".tmp", ".old") and checkpoint_step(partial.with_suffix("")) is not None:
                shutil.rmtree(partial)


def save_checkpoint(
    accelerator: "Accelerator", out: Path, state: "TrainState", ema_state: dict[str, torch.Tensor], keep: int
) -> Path:
    """Collective: every rank calls it. Returns the checkpoint folder."""
    final = Path(out) / CHECKPOINTS / f"step_{state.step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # left by a save that died part-way
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(state.state_dict(), tmp / _rank_file(accelerator.process_index))
    if accelerator.is_main_process:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, tmp / EMA_FILE)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again after a resume: swap, never delete first
            stale = final.with_name(final.name + ".old")
            final.rename(stale)
            tmp.rename(final)
            shutil.rmtree(stale)
        else:
            tmp.rename(final)
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_weights(accelerator: "Accelerator", path: Path) -> dict[str, torch.Tensor]:
    """Restore models, optimizers, scaler and RNGs in place; return the EMA state."""
    accelerator.load_state(str(path))
    return load_file(path / EMA_FILE)


def load_checkpoint(accelerator: "Accelerator", path: Path, state: "TrainState") -> dict[str, torch.Tensor]:
    """Restore models, optimizers, scaler, RNGs and this rank's train state in place; return the EMA state."""
    ema_state = load_weights(accelerator, path)
    rank_path = path / _rank_file(accelerator.process_index)
    if rank_path.exists():
        state.load_state_dict(torch.load(rank_path, map_location="cpu", weights_only=True))
    else:  # more ranks than the run that saved it
        state.continue_fresh_at(checkpoint_step(path))
    return ema_state


def load_ema_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(path) / EMA_FILE)
