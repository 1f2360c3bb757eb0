"""Share a finished run's EMA generator on the Hugging Face hub.

    python -m train.publish --run DIR --to USER/NAME [--private] [--checkpoint CKPT] [--license ID]
    python -m train.publish --run DIR --to USER/NAME --dry-run --output FOLDER   # write it, upload nothing

Uploads model.safetensors (the EMA generator's weights), config.json (the run's settings, from which
facegan rebuilds the network; local paths and W&B names left out), samples.png and README.md (the
model card: licence, training settings, the last FID/KID or Stacked MNIST scores in the run's
metrics.jsonl). Anyone then draws from it with `--run hf:USER/NAME` (train/generate.py, evaluate.py).
The token is huggingface_hub's own: HF_TOKEN, or `hf auth login`; nothing here reads or writes it.
"""
import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from train.common.writable import Unwritable, check_new_folder, written
from train.report.metrics import MetricsDamaged
from train.run.finished import FinishedRun, RunNotFound
from train.run.hub import hub_repo_id, upload
from train.run.outcome import BAD_INPUT
from train.run.published import write_published


def publish(args: argparse.Namespace) -> None:
    repo_id = hub_repo_id(args.to, f"--to {args.to}")
    finished = FinishedRun(args.run)
    if args.output is not None:
        _check_output(args.output)
    # Without --output the folder is only the upload's source, gone once it is sent.
    keep = contextlib.nullcontext(args.output) if args.output is not None else tempfile.TemporaryDirectory(prefix="facegan-publish-")
    with keep as folder:
        with written("--output", Path(folder)):
            step = write_published(finished, Path(folder), repo_id, args.license, args.checkpoint)
        at_step = f"the EMA generator of step {step}" if step is not None else "the EMA generator"
        if args.dry_run:
            print(f"wrote {at_step} to {folder} as it would be uploaded to {repo_id}; nothing was uploaded (--dry-run)")
            return
        url = upload(Path(folder), repo_id, args.private, f"facegan: {at_step}")
    print(f"published {at_step} to https://huggingface.co/{repo_id} ({url})")


def _check_output(output: Path) -> None:
    """A new or empty folder: the upload sends all of it, so nothing else may be in it."""
    check_new_folder("--output", output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the training run's --out folder")
    parser.add_argument("--to", required=True, metavar="USER/NAME", help="the hub model repository (made if missing)")
    parser.add_argument("--private", action="store_true", help="make a new repository private (an existing one keeps its visibility)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint folder (default: the latest)")
    parser.add_argument("--license", default="other",
                        help="the hub's licence id for the weights (default: other, the training data's terms, named in the card)")
    parser.add_argument("--dry-run", action="store_true", help="write the folder (--output) and upload nothing")
    parser.add_argument("--output", type=Path, default=None, help="write the folder here (a new or empty folder) and keep it")
    args = parser.parse_args(argv)
    if args.dry_run and args.output is None:
        parser.error("--dry-run: name the folder to write with --output FOLDER")
    try:
        publish(args)
    except (RunNotFound, Unwritable, MetricsDamaged) as error:  # HubUnavailable is a RunNotFound
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
