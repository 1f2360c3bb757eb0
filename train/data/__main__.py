"""`python -m train.data download SOURCE --to DIR`: local parquet shards from a hub dataset (or any
streamed source), to train from on machines without internet."""
import argparse
import sys

from train.data.download import download
from train.data.specs import DataSpecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="write a streamed source as parquet shards")
    get.add_argument("source", help="hf:<dataset-id>, 'parquet:<glob>' or an image folder")
    get.add_argument("--to", required=True, help="an empty folder for the shards")
    get.add_argument("--split", default="train")
    get.add_argument("--image-column", default=None)
    get.add_argument("--rows-per-shard", type=int, default=1000)
    get.add_argument("--limit", type=int, default=None, help="stop after this many rows")
    args = parser.parse_args(argv)
    try:
        shards = download(args.source, args.to, args.split, args.rows_per_shard, args.image_column, args.limit)
    except DataSpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(shards)} shards to {args.to}; train with --data 'parquet:{args.to}/*.parquet'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
