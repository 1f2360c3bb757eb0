"""Pictures of samples: image grids, and scatter plots for 2-D toy data."""
import math
from pathlib import Path

import torch
from einops import rearrange
from PIL import Image, ImageDraw

from train.common.atomic import atomic_write

PADDING = 2  # black pixels between and around the grid's images


def image_grid(images: torch.Tensor, columns: int | None = None) -> Image.Image:
    """(N, 3, H, W) in [-1, 1] -> a grid (square-ish unless `columns` is given) on a black background,
    laid out as torchvision's make_grid would (imported from there, it cost every trainer a second
    of start-up: torchvision pulls in its models and dynamo)."""
    count = len(images)
    columns = min(columns or math.ceil(math.sqrt(count)), count)
    rows = math.ceil(count / columns)
    pixels = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    blank = pixels.new_zeros((rows * columns - count, *pixels.shape[1:]))
    cells = torch.nn.functional.pad(torch.cat([pixels, blank]), (PADDING, 0, PADDING, 0))  # frame left and top
    grid = rearrange(cells, "(r c) ch h w -> (r h) (c w) ch", r=rows, c=columns)
    return Image.fromarray(torch.nn.functional.pad(grid, (0, 0, 0, PADDING, 0, PADDING)).numpy())


def point_plot(points: torch.Tensor, modes: torch.Tensor, std: float, size: int = 512) -> Image.Image:
    """Samples (blue) over the mode centres with their 3-std circles (red), in data coordinates."""
    extent = float(modes.abs().max()) * 1.4 + 10 * std

    def to_px(xy: list[float]) -> tuple[float, float]:
        return (xy[0] + extent) / (2 * extent) * size, (extent - xy[1]) / (2 * extent) * size

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    radius = 3 * std / (2 * extent) * size
    for x, y in (to_px(m) for m in modes.tolist()):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=(220, 40, 40))
    for x, y in (to_px(p) for p in points.float().cpu().tolist()):
        draw.point((x, y), fill=(30, 60, 200))
    return image


def samples_picture(samples: torch.Tensor, modes: torch.Tensor | None = None, std: float = 0.0) -> Image.Image:
    """A grid of images, or a scatter plot over the true modes for points."""
    return point_plot(samples, modes, std) if modes is not None else image_grid(samples)


def save_png(image: Image.Image, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))
