"""The notebooks' data, decoded once: a session whose run reads a streamed source (the hub, parquet,
an image folder) prepares it at the run's resolution into the notebook's persistent folder (Kaggle's
/kaggle/working, saved as the session's output; Colab's Google Drive), then trains from
`--data prepared:DIR`. Later sessions reuse it: on Kaggle it is copied back from the attached output
with the run, finished or not (`prepare` continues an unfinished one without redoing its shards).

The run's own settings decide what is prepared: its trainer's defaults and presets, the session's
flags, and a continuing run's config.json (train/run/resolve.py), so the pixels match what the run
would decode. A run that already has checkpoints keeps its data as it is: a stream is never swapped
under a run mid-way.
"""
import hashlib
import importlib
import json
import os
import re
import shutil
from pathlib import Path

from train.run.checkpoint import latest_checkpoint
from train.run.finished import RECIPE_CONFIGS

PREPARED_FOLDER = "prepared"  # under the notebook's persistent folder
PREPARED_KIND = "prepared:"


def prepared_data(trainer: str, flags: list[str], out: Path, root: Path, inputs: Path | None = None,
                  workers: int | None = None) -> list[str]:
    """`flags`, with `--data prepared:DIR` added where the run will read a streamed source for the
    first time, after preparing it into `root/prepared/<name>` (or restoring it from `inputs`)."""
    from train.data.specs import DataSpecError, parse_data_spec
    from train.run.flags import ConfigError

    if latest_checkpoint(out) is not None:  # a continuing run: never a new stream under it
        try:
            saved = str(json.loads((Path(out) / "config.json").read_text()).get("data", ""))
        except (OSError, ValueError, AttributeError):
            return flags  # the trainer names what is wrong with the run
        if not saved.startswith(PREPARED_KIND):
            return flags
        _restore(Path(saved.removeprefix(PREPARED_KIND)), inputs)
        return [*flags, "--data", saved]
    try:
        config = _run_config(trainer, flags, out)
        if not parse_data_spec(config.data).is_streamed:
            return flags
    except (ConfigError, DataSpecError):
        return flags  # the trainer refuses it in one line, as it would without the notebook
    folder = Path(root) / PREPARED_FOLDER / _name(config)
    if not _complete(folder):
        _restore(folder, inputs)
    if not _complete(folder):
        _prepare(config, folder, workers if workers is not None else os.cpu_count() or 1)
    print(f"training from the prepared data in {folder} (decoded once at {config.resolution} px)")
    return [*flags, "--data", f"{PREPARED_KIND}{folder}"]


def _run_config(trainer: str, flags: list[str], out: Path):
    """The settings a new run will have: its trainer's defaults and presets and the flags, as the
    trainer itself resolves them."""
    from train.run.flags import build_parser
    from train.run.resolve import resolve_config

    module, name = RECIPE_CONFIGS[f"train/{trainer}.py"].split(":")
    config_cls = getattr(importlib.import_module(module), name)
    given, _ = build_parser(config_cls, "").parse_known_args(flags)
    return resolve_config(config_cls, {**vars(given), "out": str(out)})


def _name(config) -> str:
    """A folder name that says the source and resolution, and differs for any other decoding."""
    settings = (config.data, config.split, config.image_column, config.resolution, config.celeba_crop, tuple(config.alpha_background))
    readable = re.sub(r"[^A-Za-z0-9]+", "-", config.data.rsplit("/", 2)[-1] if "/" in config.data else config.data).strip("-")
    return f"{readable[:40]}-{config.resolution}px-{hashlib.sha256(repr(settings).encode()).hexdigest()[:8]}"


def _complete(folder: Path) -> bool:
    from train.data.prepared import MANIFEST, Manifest

    try:
        return Manifest.from_json((folder / MANIFEST).read_text()).complete
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _restore(folder: Path, inputs: Path | None) -> None:
    """A previous session's copy of `folder` (the same name under an attached output), finished
    ones first, copied back: inputs are read-only, and an unfinished one is continued in place."""
    from train.data.prepared import MANIFEST

    if inputs is None or not Path(inputs).is_dir() or _complete(folder):
        return
    copies = [m.parent for m in Path(inputs).glob(f"**/{PREPARED_FOLDER}/{folder.name}/{MANIFEST}") if m.parent != folder]
    if copies:
        best = max(copies, key=_complete)
        shutil.copytree(best, folder, dirs_exist_ok=True)
        print(f"the prepared data continues from {best} (attached input) in {folder}")


def _prepare(config, folder: Path, workers: int) -> None:
    from train.data.prepare import PrepareRequest, prepare
    from train.data.prepared import Preprocessing

    print(f"preparing {config.data} once at {config.resolution} px into {folder} ({workers} decoding processes)", flush=True)
    preprocessing = Preprocessing(config.resolution, config.celeba_crop, tuple(config.alpha_background))
    manifest = prepare(PrepareRequest(config.data, folder, preprocessing, config.split, config.image_column, workers=workers)).manifest
    print(f"prepared {manifest.count} images ({manifest.skipped} unreadable rows skipped) in {folder}", flush=True)
