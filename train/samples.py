"""Pictures written to disk: image grids, and scatter plots for 2-D toy data."""
import math
import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from einops import rearrange


def _atomic_save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def image_grid(images: torch.Tensor, padding: int = 2, columns: int | None = None) -> Image.Image:
    """(N, 3, H, W) in [-1, 1] -> a grid (square-ish unless `columns` is given) on a black background."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    images = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    images = torch.nn.functional.pad(images, (padding, 0, padding, 0))
    blank = images.new_zeros((rows * columns - len(images), *images.shape[1:]))
    grid = rearrange(torch.cat([images, blank]), "(r c) ch h w -> (r h) (c w) ch", c=columns)
    grid = torch.nn.functional.pad(grid, (0, 0, 0, padding, 0, padding))
    return Image.fromarray(grid.numpy())


def point_plot(points: torch.Tensor, modes: torch.Tensor, std: float, size: int = 512) -> Image.Image:
    """Samples (blue) over the mode centres with their 3-std circles (red), in data coordinates."""
    extent = float(modes.abs().max()) * 1.4 + 10 * std
    to_px = lambda xy: ((xy[0] + extent) / (2 * extent) * size, (extent - xy[1]) / (2 * extent) * size)  # noqa: E731
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    radius = 3 * std / (2 * extent) * size
    for x, y in (to_px(m) for m in modes.tolist()):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=(220, 40, 40))
    for x, y in (to_px(p) for p in points.float().cpu().tolist()):
        draw.point((x, y), fill=(30, 60, 200))
    return image


def save_samples(samples: torch.Tensor, path: Path, modes: torch.Tensor | None = None, std: float = 0.0) -> Image.Image:
    """Write the picture of the samples (a grid, or a scatter plot for points) and return it."""
    image = point_plot(samples, modes, std) if modes is not None else image_grid(samples)
    _atomic_save(image, Path(path))
    return image
