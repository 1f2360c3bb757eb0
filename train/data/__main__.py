"""`python -m train.data download SOURCE --to DIR`: local parquet shards from a hub dataset (or any
streamed source), to train from on machines without internet.

`python -m train.data prepare SOURCE --resolution R --to DIR`: every image decoded once, as training
would decode it, stored as raw pixels; train from them with --data prepared:DIR."""
import argparse
import dataclasses
import sys
from pathlib import Path

from train.common.writable import Unwritable
from train.data.specs import DataSpecError
from train.run.flags import OneLineParser, whole_number

# The decoding flags, declared once on the training config: prepare names and limits them as training does.
PREPROCESSING_FLAGS = ("resolution", "celeba_crop", "alpha_background")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m train.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="write a streamed source as parquet shards")
    get.add_argument("source", help="hf:<dataset-id>, 'parquet:<glob>' or an image folder")
    get.add_argument("--to", required=True, help="a new or empty folder for the shards")
    get.add_argument("--split", default="train")
    get.add_argument("--image-column", default=None)
    get.add_argument("--rows-per-shard", type=whole_number(1), default=1000, help="rows a shard holds (default: 1000)")
    get.add_argument("--limit", type=whole_number(1), default=None, help="stop after this many rows")
    add_prepare_parser(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            return run_prepare(args)
        from train.data.download import download

        shards = download(args.source, args.to, args.split, args.rows_per_shard, args.image_column, args.limit)
    except (DataSpecError, Unwritable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(shards)} shards to {args.to}; train with --data 'parquet:{args.to}/*.parquet'")
    return 0


def add_prepare_parser(commands: argparse._SubParsersAction) -> None:
    from train.run.config import TrainConfig
    from train.run.flags import add_flag

    prepare = commands.add_parser("prepare", help="decode every image once and store the pixels")
    prepare.add_argument("source", help="hf:<dataset-id>, 'parquet:<glob>' or an image folder")
    prepare.add_argument("--to", required=True, help="a new or empty folder, or an unfinished preparation to continue")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in PREPROCESSING_FLAGS:
        add_flag(prepare, fields[name], default=fields[name].default)
    prepare.add_argument("--split", default="train")
    prepare.add_argument("--image-column", default=None)
    prepare.add_argument("--rows-per-shard", type=whole_number(1), default=1000, help="source rows a shard covers (default: 1000)")
    prepare.add_argument("--workers", type=whole_number(0), default=0, help="decoding processes (default: 0, this one)")
    prepare.add_argument("--limit", type=whole_number(1), default=None, help="stop after this many source rows")


def run_prepare(args: argparse.Namespace) -> int:
    from models.layers import IMAGE_RESOLUTIONS
    from train.common.freed_memory import keep_freed_memory
    from train.data.prepare import DecodingProcessDied, PrepareRequest, prepare
    from train.data.prepared import Preprocessing
    from train.run.config import TrainConfig
    from train.run.flags import ConfigError, check_limits

    try:
        check_limits(TrainConfig(**{name: getattr(args, name) for name in PREPROCESSING_FLAGS}))
        if args.resolution not in IMAGE_RESOLUTIONS:  # before an hour of decoding nothing could train from
            raise ConfigError(f"--resolution {args.resolution}: no model here trains at it;"
                              f" choose one of {', '.join(map(str, IMAGE_RESOLUTIONS))}")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    keep_freed_memory()  # this process decodes with --workers 0 (and a hub source's rows pass through it)
    preprocessing = Preprocessing(args.resolution, args.celeba_crop, tuple(args.alpha_background))
    request = PrepareRequest(args.source, Path(args.to), preprocessing, args.split, args.image_column,
                             args.rows_per_shard, args.workers, args.limit)
    try:
        result = prepare(request)
    except DecodingProcessDied as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # finished shards are whole (atomic); the one being written was never renamed
        print(f"interrupted: the shards finished so far are kept in {args.to}; rerun the same command to continue", file=sys.stderr)
        return 130
    manifest = result.manifest
    print(f"prepared {manifest.count} images ({manifest.skipped} unreadable rows skipped) in {len(manifest.shards)} shards"
          f" at {args.to}, {len(result.written)} written now; train with --data prepared:{args.to}"
          f" --resolution {args.resolution}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
