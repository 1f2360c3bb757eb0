"""Image bytes -> a square uint8 tensor at the training resolution, as cheaply as possible."""
import io
import math
import warnings

import numpy as np
import torch
from PIL import Image


class SmallSourceWarning(UserWarning):
    """Source images smaller than the training resolution get upsampled."""


def decode_image(data: bytes, resolution: int, celeba_crop: int = 0) -> torch.Tensor:
    """Optional centre crop of `celeba_crop` pixels (the aligned-CelebA recipe), short side resized to
    `resolution`, centre crop; returns uint8 (3, resolution, resolution). Raises on unreadable bytes."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
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
        image = image.convert("RGB")
        shrink = image.width / width
        if celeba_crop:
            side = round(region * shrink)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        short = min(image.size)
        size = (max(resolution, round(image.width * resolution / short)), max(resolution, round(image.height * resolution / short)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
