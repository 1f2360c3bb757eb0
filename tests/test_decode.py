"""train/data/decode.py: bytes to a square uint8 image at the training resolution."""
import io

import numpy as np
import pytest
from PIL import Image

from train.data.decode import SmallSourceWarning, decode_image
from tests.fixtures import jpeg_bytes


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_short_side_is_resized_then_centre_cropped():
    image = Image.new("RGB", (80, 40), (0, 0, 255))
    image.paste((0, 255, 0), (20, 0, 60, 40))  # the centre square is green, the sides blue
    out = decode_image(png_bytes(image), resolution=16)
    assert out.shape == (3, 16, 16) and out.dtype.is_floating_point is False
    assert out[1, :, 1:-1].float().min() > 250 and out[2, :, 1:-1].float().max() < 10  # edges blend (bicubic)


def test_celeba_crop_takes_the_centre_before_resizing():
    image = Image.new("RGB", (178, 218), (255, 0, 0))
    image.paste((0, 255, 0), (35, 55, 143, 163))  # the centre 108 x 108 is green
    out = decode_image(png_bytes(image), resolution=64, celeba_crop=108)
    assert out.shape == (3, 64, 64)
    assert out[1, 2:-2, 2:-2].float().min() > 240 and out[0, 2:-2, 2:-2].float().max() < 15


def test_large_jpegs_decode_in_draft_mode_to_the_same_picture():
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((1024, 1024), Image.BICUBIC)
    data = jpeg_bytes(coarse, quality=90)
    with Image.open(io.BytesIO(data)) as probe:
        probe.draft("RGB", (64, 64))
        assert probe.size == (128, 128)  # 1/8 scale: what decode_image gets to resize from
    out = decode_image(data, resolution=64).permute(1, 2, 0).numpy().astype(float)
    reference = np.asarray(coarse.resize((64, 64), Image.BICUBIC, reducing_gap=None), dtype=float)
    assert np.abs(out - reference).mean() < 4.0


def test_a_smaller_source_is_upsampled_with_a_warning():
    with pytest.warns(SmallSourceWarning, match="smaller \\(32px\\) than --resolution 64"):
        out = decode_image(png_bytes(Image.new("RGB", (32, 32), (9, 9, 9))), resolution=64)
    assert out.shape == (3, 64, 64)


@pytest.mark.parametrize("data", [b"", b"not an image at all", jpeg_bytes(Image.new("RGB", (64, 64)))[:200]])
def test_unreadable_bytes_raise(data):
    with pytest.raises(Exception):
        decode_image(data, resolution=16)
