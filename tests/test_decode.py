"""train/data/decode.py: bytes to a square uint8 image at the training resolution."""
import io
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.fixtures import bilevel_png, declared_png, jpeg_bytes
from train.data.decode import (
    MAX_ASPECT,
    ExtremeImage,
    SmallSourceWarning,
    decode_image,
    decode_pixels,
    max_source_pixels,
)


def png_bytes(image: Image.Image, **params) -> bytes:
    return encoded(image, "PNG", **params)


def encoded(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def uint32_tiff_bytes(samples: np.ndarray) -> bytes:
    """An uncompressed single-strip grey TIFF of unsigned 32-bit samples, which Pillow cannot write."""
    height, width = samples.shape
    pixels = samples.astype("<u4").tobytes()
    # (tag, SHORT or LONG, count, value): size, BitsPerSample 32, no compression, BlackIsZero,
    # strip offset (right after the header), one sample a pixel, one strip, its bytes, SampleFormat uint
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 32), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 8),
            (277, 3, 1, 1), (278, 3, 1, height), (279, 4, 1, len(pixels)), (339, 3, 1, 1)]
    directory = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *tag) for tag in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8 + len(pixels)) + pixels + directory


def assert_grey_ramp(out):
    """A left-to-right grey ramp over the full 8-bit range, within one step of linear."""
    ramp = np.linspace(0, 255, out.shape[-1])
    pixels = out.numpy().astype(float)
    assert (pixels == pixels[:1]).all()  # grey
    assert (np.diff(pixels, axis=-1) >= 0).all()
    assert np.abs(pixels - ramp).max() <= 1.5


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


SIDE = 64  # decoded at resolution SIDE: no resize, so pixels compare exactly


@pytest.mark.parametrize("width", [SIDE + 8, SIDE])  # cropped, or already the size (nothing copied)
def test_an_rgb_image_comes_out_channels_first_and_contiguous_with_its_own_pixels(width):
    pixels = np.random.default_rng(0).integers(0, 256, (SIDE, width, 3), dtype=np.uint8)
    out = decode_image(png_bytes(Image.fromarray(pixels)), resolution=SIDE)
    assert out.is_contiguous() and out.shape == (3, SIDE, SIDE)
    left = (width - SIDE) // 2
    assert np.array_equal(out.numpy(), pixels[:, left : left + SIDE].transpose(2, 0, 1))


@pytest.mark.parametrize("width", [SIDE + 8, SIDE])
def test_a_mirrored_decode_is_the_image_flipped_written_into_the_rows_given(width):
    """How decoding workers write a batch (train/data/batch_slots.py): flipped as decoded, into its row."""
    data = png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (SIDE, width, 3), dtype=np.uint8)))
    rows = np.zeros((2, 3, SIDE, SIDE), np.uint8)
    written = decode_pixels(data, SIDE, mirrored=True, out=rows[1])
    assert np.shares_memory(written, rows[1])
    assert np.array_equal(rows[1], decode_pixels(data, SIDE)[..., ::-1]) and not rows[0].any()


@pytest.mark.parametrize("format", ["PNG", "PPM"])  # Pillow opens a 16-bit PGM as int32 "I": the file says 16 bits
def test_a_16bit_gradient_spans_the_8bit_range(format):
    gradient = np.tile(np.linspace(0, 65535, SIDE).round().astype(np.uint16), (SIDE, 1))
    data = encoded(Image.fromarray(gradient), format)
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.mode in ("I;16", "I;16B", "I") and np.asarray(probe).max() == 65535  # really 16-bit
    assert_grey_ramp(decode_image(data, resolution=SIDE))


@pytest.mark.parametrize("signed", [True, False], ids=["int32", "uint32"])
def test_a_32bit_integer_tiff_gradient_spans_the_8bit_range(signed):
    gradient = np.tile(np.linspace(0, 2**32 - 1, SIDE).round().astype(np.int64), (SIDE, 1))
    if signed:  # Pillow writes "I" images as signed 32-bit TIFF
        data = encoded(Image.fromarray((gradient - 2**31).astype(np.int32)), "TIFF")
    else:
        data = uint32_tiff_bytes(gradient)
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.mode == "I"
    assert_grey_ramp(decode_image(data, resolution=SIDE))


def test_a_float_tiff_is_read_as_0_to_1_and_clipped():
    gradient = np.tile(np.linspace(0, 1, SIDE, dtype=np.float32), (SIDE, 1))
    data = encoded(Image.fromarray(gradient), "TIFF")
    assert_grey_ramp(decode_image(data, resolution=SIDE))
    gradient[:, :2], gradient[:, -2:] = -0.5, 1.5
    out = decode_image(encoded(Image.fromarray(gradient), "TIFF"), resolution=SIDE)
    assert (out[:, :, :2] == 0).all() and (out[:, :, -2:] == 255).all()


def rgba_with_red_under_transparency() -> Image.Image:
    image = Image.new("RGBA", (SIDE, SIDE), (255, 0, 0, 0))
    image.paste((0, 0, 255, 255), (SIDE // 2, 0, SIDE, SIDE))
    image.putpixel((0, 0), (0, 255, 0, 128))
    return image


def la_with_black_under_transparency() -> Image.Image:
    image = Image.new("LA", (SIDE, SIDE), (0, 0))
    image.paste((90, 255), (SIDE // 2, 0, SIDE, SIDE))
    image.putpixel((0, 0), (0, 128))
    return image


def palette_with_transparent_red() -> Image.Image:
    image = Image.new("P", (SIDE, SIDE), 0)
    image.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0])  # red, blue, green
    image.paste(1, (SIDE // 2, 0, SIDE, SIDE))
    image.putpixel((0, 0), 2)
    return image


# (the image, how to save it, the mode it must reopen in, its opaque colour, the colour at alpha 128)
TRANSPARENT_PNGS = {
    "RGBA": (rgba_with_red_under_transparency, {}, "RGBA", (0, 0, 255), (0, 255, 0)),
    "LA": (la_with_black_under_transparency, {}, "LA", (90, 90, 90), (0, 0, 0)),
    "P": (palette_with_transparent_red, {"transparency": bytes([0, 255, 128])}, "P", (0, 0, 255), (0, 255, 0)),
}


@pytest.mark.parametrize("background", [None, (10, 200, 30)], ids=["default-white", "chosen"])
@pytest.mark.parametrize("mode", TRANSPARENT_PNGS)
def test_transparency_is_composited_over_the_background(mode, background):
    build, params, reopened_mode, opaque, half = TRANSPARENT_PNGS[mode]
    data = png_bytes(build(), **params)
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.mode == reopened_mode
    out = decode_image(data, SIDE) if background is None else decode_image(data, SIDE, background=background)
    background = background or (255, 255, 255)
    pixels = out.permute(1, 2, 0).numpy().astype(int)
    assert (pixels[1:, : SIDE // 2] == background).all()
    assert (pixels[:, SIDE // 2 :] == opaque).all()
    assert np.abs(pixels[0, 0] - (np.add(half, background) / 2)).max() <= 2


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_colour_key_transparency_entry_shows_the_background(mode):
    image = Image.new("RGB", (SIDE, SIDE), (255, 0, 0))
    image.paste((0, 0, 255), (SIDE // 2, 0, SIDE, SIDE))
    image = image.convert(mode)
    key = image.getpixel((0, 0))
    out = decode_image(png_bytes(image, transparency=key), SIDE, background=(10, 200, 30)).permute(1, 2, 0).numpy()
    assert (out[:, : SIDE // 2] == (10, 200, 30)).all()
    assert (out[:, SIDE // 2 :] == np.asarray(image.convert("RGB"))[:, SIDE // 2 :]).all()


@pytest.mark.parametrize("width, height", [(1, 50_000), (50_000, 1), (64, 20_000)], ids=["tall", "wide", "strip"])
def test_an_image_of_extreme_shape_is_refused_before_it_is_decoded(width, height):
    data = bilevel_png(width, height)
    assert len(data) < 10_000  # tiny on disk: the danger is in what decoding it would make
    with pytest.raises(ExtremeImage, match=f"{width}x{height} px: an aspect ratio of .*:1, beyond {MAX_ASPECT}:1"):
        decode_image(data, resolution=32)


@pytest.mark.parametrize("data", [bilevel_png(6_000, 6_000), declared_png(30_000, 30_000)], ids=["36Mpx-whole", "900Mpx-declared"])
def test_an_image_of_too_many_pixels_is_refused_from_its_header(data):
    assert len(data) < 50_000
    with pytest.raises(ExtremeImage, match=r": (36\.0|900\.0) Mpx to decode, over the 33\.6 Mpx cap at --resolution 32$"):
        decode_image(data, resolution=32)


def test_the_pixel_cap_follows_the_resolution_and_counts_what_jpeg_draft_decodes():
    assert max_source_pixels(32) == max_source_pixels(64) < max_source_pixels(1024)  # a floor, then 64 R^2
    assert max_source_pixels(1024) == 64 * 1024**2
    # 49 Mpx declared, above the cap at 32 px; draft mode decodes it at 1/8 scale (0.77 Mpx): accepted.
    big = jpeg_bytes(Image.new("L", (7_000, 7_000), 90).convert("RGB"), quality=50)
    assert 7_000**2 > max_source_pixels(32)
    assert decode_image(big, resolution=32).shape == (3, 32, 32)
    assert decode_image(bilevel_png(16 * 32, 32), resolution=32).shape == (3, 32, 32)  # 16:1 is still fine


def test_a_source_smaller_than_the_resolution_warns_once_a_process_not_once_an_image():
    """Python shows a warning once per place and text unless its memory of them is reset, which a
    catch_warnings() around every open did: one line per image in a run's log."""
    small = png_bytes(Image.new("RGB", (32, 32), (9, 9, 9)))
    script = f"from train.data.decode import decode_pixels\nfor _ in range(5):\n    decode_pixels({small!r}, 64)\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("SmallSourceWarning: source images are smaller (32px) than --resolution 64") == 1
