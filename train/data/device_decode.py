"""JPEG batches decoded where the model trains (--decode-device cuda): at 512 and 1024 px a GPU
wants more images a second than CPU cores decode (bench/data_throughput.py), so the decoding
workers only read bytes and the rank decodes each batch with one `torchvision.io.decode_jpeg`
call (nvJPEG on a GPU), then crops and resizes it there.

The pixels follow `decode_image` (train/data/decode.py): the same optional centre crop, short side
to the resolution, centre crop. Two steps differ, both by design and within what
tests/test_device_decode.py holds them to against decode_image on the CPU:
- no JPEG draft mode (Pillow's decode at 1/2, 1/4 or 1/8 scale in the DCT): decode_jpeg decodes
  whole, and the antialiased resize does all of the shrinking;
- the resize is torch's antialiased bicubic (`F.interpolate(antialias=True)`, written to follow
  Pillow's BICUBIC filter), on float pixels rounded once, where Pillow first box-reduces by whole
  factors (reducing_gap=3) and rounds after each pass.
Images decode_jpeg is not given (PNG, WebP, CMYK JPEG, anything with alpha) are decoded by the
worker with decode_image, as without the flag, and travel decoded.
"""
import warnings

import torch
import torch.nn.functional as F

from train.data.decode import SmallSourceWarning, _check_pixels, _check_shape, _opened, decode_image

JPEG_MODES = ("RGB", "L")  # what decode_jpeg turns into RGB on every device (nvJPEG has no CMYK)
DECODE_DEVICES = ("cpu", "cuda")


class BrokenBatch(ValueError):
    """Not one image of a batch decoded: the rank has nothing to train on from it."""


def encoded_or_decoded(
    data: bytes, resolution: int, celeba_crop: int = 0, background: tuple[int, int, int] = (255, 255, 255)
) -> torch.Tensor:
    """In a decoding worker: a JPEG as its bytes (a 1-D uint8 tensor), its shape and size checked
    from its header as decode_image checks them; any other image decoded (3, resolution, resolution)."""
    with _opened(data, resolution) as image:
        if image.format != "JPEG" or image.mode not in JPEG_MODES:
            return decode_image(data, resolution, celeba_crop, background)
        width, height = image.size
    _check_shape(width, height)
    _check_pixels(f"{width}x{height} px", width * height, resolution)  # decoded whole: no draft mode
    region = min(celeba_crop, width, height) if celeba_crop else min(width, height)
    if region < resolution:
        warnings.warn(f"source images are smaller ({region}px) than --resolution {resolution}: upsampling them",
                      SmallSourceWarning, stacklevel=2)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_batch(
    items: list[torch.Tensor], resolution: int, celeba_crop: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """A worker's batch (encoded JPEGs and decoded images, in order) as uint8 (N, 3, resolution,
    resolution) on `device`, and how many JPEGs failed to decode. A failed one's place is taken by
    another image of the batch, so the batch keeps its size; BrokenBatch when none decoded."""
    at = [i for i, item in enumerate(items) if item.dim() == 1]
    jpegs = dict(zip(at, _decoded_jpegs([items[i] for i in at], device)))
    images = [square(jpegs[i], resolution, celeba_crop) if i in jpegs else item.to(device, non_blocking=True)
              for i, item in enumerate(items) if i not in at or jpegs[i] is not None]
    if not images:
        raise BrokenBatch(f"none of a batch's {len(items)} JPEGs decoded")
    failed = len(items) - len(images)
    return torch.stack(images + images[:failed]), failed


def _decoded_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Each JPEG as uint8 (3, H, W) on `device`, None for one that does not decode. One call for
    the batch; only when it fails, one call each, to find the broken ones."""
    if not encoded:
        return []
    from torchvision.io import ImageReadMode, decode_jpeg  # torchvision costs its import only here

    # torchvision 0.29 deprecates its decoders for TorchCodec's, with a warning at every call; this
    # one stays until the project depends on torchcodec (its decode_jpeg takes the same batches).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision", category=DeprecationWarning)
        try:
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            decoded: list[torch.Tensor | None] = []
            for data in encoded:
                try:
                    decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
            return decoded


def square(image: torch.Tensor, resolution: int, celeba_crop: int = 0) -> torch.Tensor:
    """decode_image's geometry on a decoded uint8 (3, H, W) tensor, on its own device: optional
    centre crop of `celeba_crop` pixels, short side to `resolution` (antialiased bicubic), centre crop."""
    _, height, width = image.shape
    if celeba_crop:
        side = min(celeba_crop, width, height)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[:, top : top + side, left : left + side]
        height = width = side
    short = min(height, width)
    size = (max(resolution, round(height * resolution / short)), max(resolution, round(width * resolution / short)))
    if size != (height, width):
        resized = F.interpolate(image[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False)
        image = resized[0].round_().clamp_(0, 255).to(torch.uint8)  # bicubic overshoots: clamp, as Pillow does
    top, left = (image.shape[1] - resolution) // 2, (image.shape[2] - resolution) // 2
    return image[:, top : top + resolution, left : left + resolution].contiguous()
