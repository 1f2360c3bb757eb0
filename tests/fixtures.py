"""Data the tests make themselves: parquet shards with the hub dataset's schema, image folders,
and images whose size would be dangerous to decode (small on disk all the same).

Each image carries its row id as a 4x4 grid of black/white 8x8 blocks (16 bits), which survives
JPEG; `row_ids` reads the ids back from a decoded uint8 batch at 32 px.
"""
import io
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

SIZE = 32
FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})


def id_image(row: int, size: int = SIZE) -> Image.Image:
    bits = np.array([(row >> b) & 1 for b in range(16)], dtype=np.uint8).reshape(4, 4) * 255
    blocks = np.kron(bits, np.ones((size // 4, size // 4), dtype=np.uint8))
    return Image.fromarray(np.stack([blocks] * 3, axis=-1))


def jpeg_bytes(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def row_ids(batch: torch.Tensor) -> list[int]:
    step = batch.shape[-1] // 4
    centres = batch[:, 0, step // 2 :: step, step // 2 :: step].reshape(len(batch), 16) > 127
    return [int(sum(int(bit) << b for b, bit in enumerate(bits))) for bits in centres.tolist()]


def write_parquet_shards(folder: Path, rows: int, shards: int, corrupt_every: int = 0, row_group: int | None = None) -> str:
    """`rows` rows over `shards` files; every `corrupt_every`-th row holds truncated JPEG bytes.
    Returns the glob for --data parquet:<glob>."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard, ids in enumerate(np.array_split(np.arange(rows), shards)):
        records = []
        for row in ids.tolist():
            data = jpeg_bytes(id_image(row))
            if corrupt_every and row % corrupt_every == corrupt_every - 1:
                data = data[: len(data) // 3]
            records.append({"image": {"bytes": data, "path": None}, "label": row})
        table = datasets.Dataset.from_list(records, features=FEATURES)
        table.to_parquet(str(folder / f"train-{shard:05d}.parquet"), batch_size=row_group)
    return str(folder / "*.parquet")


def write_image_folder(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for row in range(rows):
        sub = folder / ("a" if row % 2 else "b")
        sub.mkdir(exist_ok=True)
        id_image(row).save(sub / f"{row:05d}.{'png' if row % 3 else 'jpg'}", quality=95)
    return folder


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height grey pixels, with one row of data: Pillow's open
    reads the header alone, so this is what a crafted file of any declared size looks like."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(width + 1))) + chunk(b"IEND", b"")


def bilevel_png(width: int, height: int) -> bytes:
    """A real, whole 1-bit PNG of one colour: a few hundred bytes to a few kilobytes at any size."""
    buffer = io.BytesIO()
    Image.new("1", (width, height), 1).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def unwritable_folder(kind: str, tmp_path: Path, request) -> Path:
    """A folder no file can be written in: "under a file" (a path below a regular file), "read-only"
    (a read-only tmpfs mount: permission bits stop no one when the tests run as root), or "tiny"
    (a 16 KB tmpfs, which a write fills midway). The mounts are skipped where mount(8) is not
    permitted."""
    import subprocess

    import pytest

    if kind == "under a file":
        (tmp_path / "notes").write_text("mine")
        return tmp_path / "notes" / "out"
    mount = tmp_path / "ro"
    mount.mkdir()
    options = "size=16k" if kind == "tiny" else "ro"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=False, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"a read-only mount needs mount(8) to be permitted here: {result.stderr.strip()}")
    request.addfinalizer(lambda: subprocess.run(["umount", str(mount)], check=True))
    return mount
