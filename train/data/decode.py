"""Image bytes -> a square uint8 array (a tensor for the streams) at the training resolution, as cheaply as possible.

No torch at import: `prepare`'s decoding processes use `decode_pixels` and start in a tenth of the
time without it (train/data/prepare_shards.py)."""
from __future__ import annotations

import functools
import hashlib
import io
import math
import re
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
BITS_PER_SAMPLE, SAMPLE_FORMAT, SIGNED_INTEGER = 258, 339, 2  # TIFF tags and the SampleFormat value


# An image is decoded whole, then resized by its short side: what it costs follows from its size in
# pixels and its shape, not from its bytes, and a few hundred bytes of PNG can declare either
# (issue 23: one 64x20000 file tripled a run's memory). Beyond these limits a row is skipped and
# counted like an unreadable one, before a pixel is decoded.
MAX_ASPECT = 16  # long side over short: resized by its short side, the long one grows as much
# Decoded pixels per image (after JPEG draft): a floor that takes a photo whole even where it
# cannot be decoded smaller (PNG, WebP), and 64 output images' worth at the higher resolutions.
SOURCE_PIXELS_FLOOR = 1 << 25  # 33.6 Mpx, 8192 x 4096
SOURCE_PIXELS_PER_OUTPUT_PIXEL = 64


class SmallSourceWarning(UserWarning):
    """Source images smaller than the training resolution get upsampled."""


class ExtremeImage(ValueError):
    """An image whose shape or pixel count is beyond what decode_image takes at this resolution."""


class ExtremeImageWarning(UserWarning):
    """A row skipped as an ExtremeImage; the message names the row."""


def max_source_pixels(resolution: int) -> int:
    """The most pixels decode_image decodes for one image at `resolution` (after JPEG draft)."""
    return max(SOURCE_PIXELS_FLOOR, SOURCE_PIXELS_PER_OUTPUT_PIXEL * resolution**2)


def image_bytes(cell: dict) -> bytes:
    """An undecoded Image cell: hub and parquet rows hold the bytes, image folders only a path."""
    if cell.get("bytes") is not None:
        return cell["bytes"]
    with open(cell["path"], "rb") as f:
        return f.read()


def row_name(cell: dict, data: bytes) -> str:
    """How a user finds a row again: its file (image folders, and hub datasets that keep file
    names), else its size and hash."""
    if cell.get("path"):
        return f"the image {cell['path']}"
    return f"a {len(data)}-byte image (sha1 {hashlib.sha1(data).hexdigest()[:12]})"


def decode_image(
    data: bytes, resolution: int, celeba_crop: int = 0, background: tuple[int, int, int] = (255, 255, 255)
) -> torch.Tensor:
    """`decode_pixels` as a tensor sharing its memory: what the data streams batch."""
    import torch  # here rather than at the top (module docstring); after the first call, a dictionary lookup

    return torch.from_numpy(decode_pixels(data, resolution, celeba_crop, background))


def decode_pixels(
    data: bytes, resolution: int, celeba_crop: int = 0, background: tuple[int, int, int] = (255, 255, 255),
    *, mirrored: bool = False, out: np.ndarray | None = None,
) -> np.ndarray:
    """Optional centre crop of `celeba_crop` pixels (the aligned-CelebA recipe), short side resized to
    `resolution`, centre crop, then a horizontal flip if `mirrored`; returns a contiguous uint8
    (3, resolution, resolution): `out` where given (a batch's row, written only once the image has
    decoded), else a new array. Raises on unreadable bytes.

    Pixel values become 8 bits as follows (`_to_rgb`):
    - 8-bit modes (RGB, L, 1, P, CMYK, YCbCr, ...): Pillow's own conversion to RGB.
    - 16-bit integers ("I;16*", and "I" from PNG or PGM, which older Pillow widens to int32): the top
      byte, `value >> 8` (truncation, not /257 rounding; the same byte Pillow keeps of 16-bit RGB PNGs).
    - other "I" (32-bit TIFF and the like): the top byte of the 32-bit range, `value >> 24` for
      unsigned samples, `(value + 2**31) >> 24` for signed ones; TIFF tags say which and how many bits.
    - "F": taken as [0, 1], clipped, times 255, rounded; NaN is 0.
    - transparency (an alpha channel, or info["transparency"] on P, L or RGB): composited over
      `background`, before resizing so that colours hidden under alpha 0 never bleed into the edges."""
    with _opened(data, resolution) as image:
        width, height = image.size
        _check_shape(width, height)
        region = min(celeba_crop, width, height) if celeba_crop else min(width, height)
        if region < resolution:
            warnings.warn(
                f"source images are smaller ({region}px) than --resolution {resolution}: upsampling them",
                SmallSourceWarning,
                stacklevel=2,
            )
        # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale directly: the cheapest shrink there is,
        # never below what the resize needs.
        scale = resolution / region
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        _check_pixels(f"{width}x{height} px", image.width * image.height, resolution)
        image = _to_rgb(image, background)
        shrink = image.width / width
        if celeba_crop:
            side = round(region * shrink)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        short = min(image.size)
        size = (max(resolution, round(image.width * resolution / short)), max(resolution, round(image.height * resolution / short)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        if image.size != (resolution, resolution):  # crop() copies even a box that is the whole image
            left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
            image = image.crop((left, top, left + resolution, top + resolution))
        if mirrored:  # Pillow reorders the pixels in its own storage: cheaper than flipping the planes after
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _planar(image, out)


def _opened(data: bytes, resolution: int) -> Image.Image:
    """The image, its header read and no pixel decoded yet (Pillow's open is lazy)."""
    _quiet_pillows_size_warning()
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:  # Pillow's own limit (179 Mpx), checked before ours can be
        declared = re.search(r"\((\d+) pixels\)", str(error))
        if declared is None:
            raise ExtremeImage(str(error)) from None
        _check_pixels("the size its header declares", int(declared.group(1)), resolution)
        raise


@functools.cache
def _quiet_pillows_size_warning() -> None:
    """Pillow warns from 89 Mpx; ours is the message that says what happens (ExtremeImage). Filtered
    once a process: a catch_warnings() around every open reset Python's memory of the warnings
    already shown, so a dataset of small images printed its SmallSourceWarning once an image."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _check_shape(width: int, height: int) -> None:
    if max(width, height) > MAX_ASPECT * min(width, height):
        ratio = max(width, height) / max(1, min(width, height))
        raise ExtremeImage(f"{width}x{height} px: an aspect ratio of {ratio:.0f}:1, beyond {MAX_ASPECT}:1")


def _check_pixels(what: str, pixels: int, resolution: int) -> None:
    cap = max_source_pixels(resolution)
    if pixels > cap:
        raise ExtremeImage(f"{what}: {pixels / 1e6:.1f} Mpx to decode, over the {cap / 1e6:.1f} Mpx cap at --resolution {resolution}")


def _planar(image: Image.Image, out: np.ndarray | None) -> np.ndarray:
    """An RGB image as a contiguous uint8 (3, H, W) array, `out` if given: the layout batches are stacked in."""
    # Pillow packs one band at a time straight from its pixel storage. np.asarray(image) gives
    # (H, W, 3) instead, and transposing that into a batch took about two thirds as long as the JPEG
    # decode itself at 1024 px (bench/data_throughput.py, issue 13).
    if out is None:
        out = np.empty((3, image.height, image.width), np.uint8)
    for plane, band in zip(out, "RGB"):
        plane[...] = np.frombuffer(image.tobytes("raw", band), np.uint8).reshape(image.height, image.width)
    return out


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    # Pillow's convert() clips "I" and "F" values to 0..255 instead of scaling them: a 16-bit
    # gradient comes out nearly white.
    if image.mode == "F":
        image = Image.fromarray(np.rint(np.clip(np.nan_to_num(np.asarray(image)), 0.0, 1.0) * 255).astype(np.uint8))
    elif image.mode.startswith("I"):
        bits, signed = _integer_format(image)
        # The mask reads an unsigned 32-bit sample back from the int32 Pillow stores it in.
        samples = (np.asarray(image, dtype=np.int64) + ((1 << (bits - 1)) if signed else 0)) & ((1 << bits) - 1)
        image = Image.fromarray((samples >> (bits - 8)).astype(np.uint8))
    if image.mode not in ALPHA_MODES and "transparency" not in image.info:
        # convert() to the mode an image is in already copies it, 4 MB at 1024 px (Pillow keeps RGB as RGBX)
        return image if image.mode == "RGB" else image.convert("RGB")
    image = image.convert("RGBA")  # turns a palette or colour-key transparency entry into alpha
    flat = Image.new("RGB", image.size, background)
    flat.paste(image, mask=image.getchannel("A"))
    return flat


def _integer_format(image: Image.Image) -> tuple[int, bool]:
    """(bits, signed) of the integer samples behind an "I*" image: the mode alone does not say."""
    if image.mode.startswith("I;16"):
        return 16, False
    if image.format == "TIFF":
        return image.tag_v2.get(BITS_PER_SAMPLE, (32,))[0], image.tag_v2.get(SAMPLE_FORMAT, (1,))[0] == SIGNED_INTEGER
    if image.format in ("PNG", "PPM"):  # neither stores more than 16 bits a sample
        return 16, False
    return 32, True  # Pillow's "I" is int32
