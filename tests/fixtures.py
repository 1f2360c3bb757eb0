"""Data the tests make themselves: parquet shards with the hub dataset's schema, image folders.

Each image carries its row id as a 4x4 grid of black/white 8x8 blocks (16 bits), which survives
JPEG; `row_ids` reads the ids back from a decoded uint8 batch at 32 px.
"""
import io
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
