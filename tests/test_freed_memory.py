"""train/common/freed_memory.py: a decoding process reuses the memory it frees, whatever its history."""
import resource
from pathlib import Path

import numpy as np
from PIL import Image

from train.data import prepare_shards
from train.data.decode import decode_pixels
from train.data.prepared import Preprocessing

RESOLUTION = 1024


def write_face_sized_jpegs(folder: Path, count: int) -> list[Path]:
    """1024-px JPEGs of a few hundred kB, as CelebA-HQ's are: smooth noise, not a file of MBs."""
    folder.mkdir()
    paths = []
    for seed in range(count):
        coarse = np.random.default_rng(seed).integers(0, 256, (128, 128, 3), dtype=np.uint8)
        path = folder / f"{seed}.jpg"
        Image.fromarray(coarse).resize((RESOLUTION, RESOLUTION), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def page_faults_decoding(paths: list[Path]) -> float:
    """Minor page faults a decode of each JPEG file after the first two took the calling process
    (the heap grows to its working size over those)."""
    for path in paths[:2]:
        decode_pixels(path.read_bytes(), RESOLUTION)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for path in paths[2:]:
        decode_pixels(path.read_bytes(), RESOLUTION)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (len(paths) - 2)


def test_prepares_decoding_processes_decode_1024_px_images_into_memory_they_reuse(tmp_path):
    """A forkserver's child starts with glibc's default thresholds: without keep_freed_memory() it
    took fresh pages for every image (2,272 faults a 1024-px image on this project's VM, twice the
    decode's CPU time)."""
    paths = write_face_sized_jpegs(tmp_path / "faces", 8)
    with prepare_shards.Decoder(Preprocessing(RESOLUTION), tmp_path, workers=1) as decoder:
        faults = decoder.pool.submit(page_faults_decoding, paths).result(timeout=300)
    assert faults < 50, f"{faults:.0f} page faults an image in a decoding process"
