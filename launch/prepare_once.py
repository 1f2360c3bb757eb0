"""The notebooks' data, decoded once: a session whose run reads a streamed source (the hub, parquet,
an image folder) prepares it at the run's resolution into the notebook's persistent folder (Kaggle's
/kaggle/working, saved as the session's output; Colab's Google Drive), then trains from
`--data prepared:DIR`. Later sessions reuse it: on Kaggle it is copied back from the attached output
with the run, finished or not (`prepare` continues an unfinished one without redoing its shards).

The run's own settings decide what is prepared: its trainer's defaults and presets and the session's
flags, resolved as the trainer resolves them (train/run/resolve.py), so the pixels match what the run
would decode. A run that already has checkpoints keeps the data its config.json names, whatever the
flags say: a stream is never swapped under a run mid-way (a prepared one is restored and named again).
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
    from train.data.specs import DataSpecError
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
        options = _run_config(trainer, flags, out).data_options
    except (ConfigError, DataSpecError):
        return flags  # the trainer refuses it in one line, as it would without the notebook
    if not options.spec.is_streamed:
        return flags
    folder = Path(root) / PREPARED_FOLDER / _name(options)
    if not _complete(folder):
        _restore(folder, inputs)
    if not _complete(folder):
        _prepare(options, folder, workers if workers is not None else os.cpu_count() or 1)
    print(f"training from the prepared data in {folder} (decoded once at {options.resolution} px)")
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


def _name(options) -> str:
    """A folder name that says the source and resolution, and differs for any other decoding."""
    from train.data.prepared import Preprocessing

    source = str(options.spec)
    settings = (source, options.split, options.image_column, Preprocessing.of(options))
    readable = re.sub(r"[^A-Za-z0-9]+", "-", source.rsplit("/", 1)[-1]).strip("-")
    return f"{readable[:40]}-{options.resolution}px-{hashlib.sha256(repr(settings).encode()).hexdigest()[:8]}"


def _complete(folder: Path) -> bool:
    from train.data.prepared import read_manifest
    from train.data.specs import DataSpecError

    try:
        return read_manifest(folder, str(folder)).complete
    except DataSpecError:  # none yet, or unreadable: prepare (again)
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


def _prepare(options, folder: Path, workers: int) -> None:
    from train.data.prepare import PrepareRequest, prepare
    from train.data.prepared import Preprocessing

    print(f"preparing {options.spec} once at {options.resolution} px into {folder} ({workers} decoding processes)", flush=True)
    request = PrepareRequest(str(options.spec), folder, Preprocessing.of(options), options.split, options.image_column, workers=workers)
    manifest = prepare(request).manifest
    print(f"prepared {manifest.count} images ({manifest.skipped} unreadable rows skipped) in {folder}", flush=True)
