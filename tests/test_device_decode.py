"""train/data/device_decode.py: JPEG batches decoded by decode_jpeg (--decode-device cuda), run here
on the CPU, against decode_image's pixels; the flag refused where there is no GPU to decode on."""
import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import train_in_process
from tests.fixtures import jpeg_bytes, row_ids, write_parquet_shards
from train.data import DataOptions, open_stream, parse_data_spec
from train.data.decode import decode_image
from train.data.device_decode import BrokenBatch, decode_batch, encoded_or_decoded

CPU = torch.device("cpu")
# Measured against decode_image over 20 seeds of these images: at most 13 levels apart and 1.3 on
# average where a colour source shrinks by exactly 2 (Pillow decodes it at half scale in the DCT,
# draft mode, chroma included, where decode_jpeg decodes whole and resizes); at most 4 and 0.7 at
# other ratios, 6 and 0.7 from 1024 px to 512. A resize without antialiasing, a shifted crop or
# swapped channels all land well outside.
MAX_LEVELS, MEAN_LEVELS = 16, 1.5


def photo(width: int, height: int, seed: int, mode: str = "RGB") -> bytes:
    """A smooth colour field with fine noise, about a face photo's frequencies, as a JPEG."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.clip(np.asarray(coarse, dtype=float) + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    return jpeg_bytes(Image.fromarray(pixels).convert(mode), quality=90)


def levels_apart(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    difference = (a.int() - b.int()).abs().float()
    return int(difference.max()), float(difference.mean())


# (width, height), resolution, celeba_crop, mode: shrinking by 3.75 and by 2 (draft's exact half),
# upsampling, the CelebA crop, and a greyscale JPEG.
CASES = [((120, 96), 32, 0, "RGB"), ((64, 64), 32, 0, "RGB"), ((40, 50), 64, 0, "RGB"), ((178, 218), 64, 108, "RGB"),
         ((120, 96), 32, 0, "L")]


@pytest.mark.filterwarnings("ignore::train.data.decode.SmallSourceWarning")
def test_a_batch_decoded_by_decode_jpeg_matches_decode_image_within_the_stated_levels():
    sources = [photo(w, h, seed, mode) for seed, ((w, h), _, _, mode) in enumerate(CASES)]
    for data, (_, resolution, crop, _) in zip(sources, CASES):
        batch, failed = decode_batch([encoded_or_decoded(data, resolution, crop)], resolution, crop, CPU)
        assert failed == 0 and batch.shape == (1, 3, resolution, resolution) and batch.dtype == torch.uint8
        most, mean = levels_apart(batch[0], decode_image(data, resolution, crop))
        assert most <= MAX_LEVELS and mean <= MEAN_LEVELS, (resolution, crop, most, mean)


def test_images_decode_jpeg_does_not_take_travel_decoded_by_decode_image_in_their_place():
    buffer = io.BytesIO()
    Image.new("RGBA", (48, 40), (200, 10, 10, 0)).save(buffer, format="PNG")
    items = [encoded_or_decoded(photo(48, 40, 1), 32), encoded_or_decoded(buffer.getvalue(), 32, background=(0, 0, 255))]
    assert items[0].dim() == 1 and items[1].shape == (3, 32, 32)  # bytes still, and the PNG decoded
    batch, _ = decode_batch(items, 32, 0, CPU)
    assert torch.equal(batch[1], decode_image(buffer.getvalue(), 32, background=(0, 0, 255)))
    assert batch[1, 2].min() == 255 and batch[1, 0].max() == 0  # alpha composited over the background


def test_a_jpeg_that_does_not_decode_is_counted_and_its_place_taken_by_another():
    good = photo(40, 40, 2)
    scan = good.index(b"\xff\xda")  # header whole, scan data zeroed: it fails only when decoded
    broken = good[: scan + 20] + bytes(len(good) - scan - 20)
    batch, failed = decode_batch([encoded_or_decoded(data, 32) for data in (good, broken)], 32, 0, CPU)
    assert failed == 1 and batch.shape[0] == 2 and torch.equal(batch[0], batch[1])
    with pytest.raises(BrokenBatch):
        decode_batch([encoded_or_decoded(broken, 32)], 32, 0, CPU)


def test_the_stream_decodes_its_batches_on_the_device_with_the_workers_rows_and_flips(tmp_path):
    glob = write_parquet_shards(tmp_path, rows=12, shards=1)

    def batches(device: str | None) -> list[torch.Tensor]:
        options = DataOptions(parse_data_spec(f"parquet:{glob}"), resolution=32, workers=0, hflip=True, shuffle_buffer=4,
                              batch_decode_device=device)
        return list(itertools.islice(open_stream(options, batch_size=6, seed=0, rank=0, world_size=1), 2))

    on_device, in_workers = batches("cpu"), batches(None)
    for ours, theirs in zip(on_device, in_workers):
        assert row_ids(ours) == row_ids(theirs)
        most, mean = levels_apart(ours, theirs)  # the same rows, flipped alike (flips missed: 255 levels apart, 5 to 11 on average)
        assert most <= MAX_LEVELS and mean <= MEAN_LEVELS


@pytest.mark.parametrize("flags, why", [
    (("--cpu",), "--cpu trains on the CPU"),
    pytest.param((), "no CUDA GPU here", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
])
def test_decode_device_cuda_without_a_gpu_is_refused_in_one_line_before_any_compute(tmp_path, flags, why):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "face.jpg").write_bytes(photo(40, 40, 0))
    out = tmp_path / "run"
    result = train_in_process("train/wgangp.py", "--data", str(tmp_path / "images"), "--decode-device", "cuda", *flags,
                              "--out", str(out))
    assert result.returncode == 2
    assert result.stderr == f"error: --decode-device cuda: {why}" + result.stderr.split(why, 1)[1]
    assert result.stderr.count("\n") == 1 and "drop --decode-device" in result.stderr
    assert not out.exists()
