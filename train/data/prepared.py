"""A prepared dataset on disk: images decoded once, stored as raw pixels, described by a manifest.

    DIR/manifest.json          the source, the decoding options, counts, one record per finished shard
    DIR/shard-00000.npy        uint8 (images, 3, R, R), the planar layout decode_image returns

Why .npy and not parquet: a shard is one fixed-shape array, memory-mapped where it is read. Rows
are views of the page cache, copied once into the batch (mirrored on the way when flipped); parquet would hand
each row over as a new bytes object (and a column decompressed first). At 256 px that difference
is what keeps a process above 3,000 images/s (bench/data_throughput.py).

Why CRC-32 and not SHA-256 per shard: it guards against damage (a truncated copy, a flipped bit on
shared storage), not against tampering, and it is verified every time a shard is opened: zlib's
crc32 runs at several GB/s over a memory map where sha256 ran at 0.9 GB/s here, which alone would
cap a 256-px reader near 4,000 images/s.

Only the standard library and numpy here: the checks of a run's flags read the manifest before
anything heavy is imported.
"""
import dataclasses
import json
import mmap
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from train.common.atomic import atomic_write_text
from train.data.specs import DataSpecError
from train.run.flags import shown

if TYPE_CHECKING:
    from train.data.options import DataOptions

MANIFEST = "manifest.json"
FORMAT = 1


class PreparedShardWarning(UserWarning):
    """A prepared shard that failed its checksum or could not be read: its rows are skipped and counted."""


@dataclass(frozen=True)
class Preprocessing:
    """The decoding that made the pixels: what a run's flags must match to train from them."""

    resolution: int
    celeba_crop: int = 0
    background: tuple[int, int, int] = (255, 255, 255)

    @classmethod
    def of(cls, options: "DataOptions") -> "Preprocessing":
        return cls(options.resolution, options.celeba_crop, tuple(options.background))

    def flags(self) -> dict[str, object]:
        """These settings by the flags that give them, to training and to prepare alike."""
        return {"--resolution": self.resolution, "--celeba-crop": self.celeba_crop, "--alpha-background": self.background}

    def mismatch(self, other: "Preprocessing") -> str | None:
        """The first flag on which a run (`other`) differs from the preparation, said as both values."""
        if difference := first_difference(self.flags(), other.flags()):
            flag, mine, theirs = difference
            return f"{flag} {shown(theirs)}: the data was prepared with {flag} {shown(mine)}"
        return None


def first_difference(mine: dict[str, object], theirs: dict[str, object]) -> tuple[str, object, object] | None:
    """The first flag two sets of settings give differently, with both values."""
    return next(((flag, mine[flag], theirs[flag]) for flag in mine if mine[flag] != theirs[flag]), None)


@dataclass(frozen=True)
class ShardRecord:
    """A shard written whole and its checksum taken: it is never decoded again."""

    index: int
    file: str
    images: int
    source_rows: int  # rows of the source it covers, the skipped ones included
    skipped: int
    crc32: str
    skipped_rows: tuple[str, ...] = ()  # how a user finds each skipped row (its file, or size and hash)


@dataclass
class Manifest:
    source: str
    split: str
    image_column: str
    preprocessing: Preprocessing
    rows_per_shard: int
    complete: bool = False
    shards: list[ShardRecord] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(shard.images for shard in self.shards)

    @property
    def skipped(self) -> int:
        return sum(shard.skipped for shard in self.shards)

    def settings(self) -> dict[str, object]:
        """What a rerun must give again to continue this preparation, by the flags that give it."""
        return {"SOURCE": self.source, "--split": self.split, "--image-column": self.image_column, **self.preprocessing.flags(),
                "--rows-per-shard": self.rows_per_shard}

    def to_json(self) -> str:
        record = dataclasses.asdict(self)
        record["preprocessing"]["background"] = list(self.preprocessing.background)
        return json.dumps({"format": FORMAT, **record, "count": self.count, "skipped": self.skipped}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        record = json.loads(text)
        if record.pop("format", None) != FORMAT:
            raise ValueError(f"not a format-{FORMAT} manifest")
        record.pop("count"), record.pop("skipped")
        preprocessing = record.pop("preprocessing")
        preprocessing["background"] = tuple(preprocessing["background"])
        shards = [ShardRecord(**{**s, "skipped_rows": tuple(s["skipped_rows"])}) for s in record.pop("shards")]
        return cls(**record, preprocessing=Preprocessing(**preprocessing), shards=shards)

    def write(self, folder: Path) -> None:
        atomic_write_text(Path(folder) / MANIFEST, self.to_json())


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npy"


def file_crc32(path: Path) -> str:
    """CRC-32 of a whole file, read through a memory map (no copy into this process's heap)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return f"{zlib.crc32(b''):08x}"
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return f"{zlib.crc32(mapped):08x}"


def read_manifest(folder: Path, spec_text: str) -> Manifest:
    """The manifest of a prepared folder; DataSpecError naming the fix when it is missing or unreadable."""
    path = Path(folder) / MANIFEST
    try:
        return Manifest.from_json(path.read_text())
    except FileNotFoundError:
        raise DataSpecError(
            f"--data {spec_text}: no {MANIFEST} in {folder}; make it with"
            f" `python -m train.data prepare SOURCE --resolution R --to {folder}`"
        ) from None
    except (ValueError, KeyError, TypeError) as error:
        raise DataSpecError(f"--data {spec_text}: {path} cannot be read ({error}); prepare the data again") from None


def check_trainable(manifest: Manifest, spec_text: str, run: Preprocessing) -> None:
    """A run may train from a finished preparation made with its own decoding flags: refused in one
    line otherwise, before any compute."""
    if not manifest.complete:
        raise DataSpecError(
            f"--data {spec_text}: the preparation is unfinished ({len(manifest.shards)} shards so far); rerun the same"
            " `python -m train.data prepare` command to finish it"
        )
    if problem := manifest.preprocessing.mismatch(run):
        raise DataSpecError(f"{problem} (--data {spec_text}); train with the prepared value, or prepare the source again with yours")


def check_prepared(options: "DataOptions") -> Manifest:
    """The manifest of `--data prepared:DIR`, once it is known to suit these options."""
    manifest = read_manifest(Path(options.spec.name), str(options.spec))
    check_trainable(manifest, str(options.spec), Preprocessing.of(options))
    return manifest
