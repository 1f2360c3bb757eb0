"""Write samples from a run's EMA generator.

    python train/generate.py --run DIR --output FILE [--n N]                    # a grid
    python train/generate.py --run DIR --output FILE.png --interpolate K [--n N]  # interpolation strip
    python train/generate.py --run DIR --output FILE.gif --gif [--n N] [--frames F] [--fps R] [--keyframes M]

Image runs write a PNG grid, or with a .npy output the raw samples as uint8 (N, 3, H, W) (the
exact inverse of the data's scaling); toy runs write a .npy array of shape (N, 2) in data
coordinates (or, with a .png output, a scatter plot over the true modes). A .npy is drawn and
written in chunks, so any N the disk holds fits in memory; a picture holds all its samples at
once, and one that Pillow would not open without a decompression-bomb warning is refused.

--interpolate K: a PNG of N rows (default 8), each the generator along the great circle between
two random latents in K steps; the left column is the grid's samples for the same --seed.
--truncation PSI: every latent component beyond +-PSI redrawn until within it (the BigGAN truncation
trick, train/run/truncation.py); strips and GIFs truncate their end and key latents, and the great
circles between them may pass slightly outside.
--gif: an animated GIF of the grid of N samples (default 16) whose latents walk a closed loop
through M random keyframe latents (default 4) in F frames (default 48) at R frames per second
(default 12); the first frame is the grid's samples for the same --seed. Toy runs animate the
scatter plot instead; they have no interpolation strip.
"""
import argparse
import bisect
import math
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from train.common.atomic import atomic_write
from train.common.writable import Unwritable, check_writable, written
from train.report.fid import to_uint8
from train.report.gif import write_gif
from train.report.samples import PADDING, image_grid, samples_picture, save_png
from train.run.finished import FinishedRun, RunNotFound
from train.run.networks import render_samples
from train.run.outcome import BAD_INPUT
from train.run.truncation import TRUNCATION_HELP, truncated_latents, truncation_psi

DEFAULT_N = {"grid": 64, "interpolate": 8, "gif": 16}
DEFAULT_FRAMES, DEFAULT_FPS, DEFAULT_KEYFRAMES = 48, 12.0, 4
# Samples per chunk of a .npy: 26,000 images of 1024 px would be 80 GB at once. At most NPY_CHUNK,
# and at most NPY_CHUNK_VALUES values (64 MB of float32) at high resolutions; a multiple of 16 rows.
NPY_CHUNK, NPY_CHUNK_VALUES = 1024, 1 << 24
MAX_FPS = 50  # GIF delays are whole centiseconds, and viewers slow anything under 2 cs down to 10 cs
# Pillow's default MAX_IMAGE_PIXELS: a bigger picture opens with a decompression-bomb warning, one
# twice as big not at all. Its samples are held at once, as float32 (12 bytes a pixel).
MAX_PICTURE_PIXELS = 89_478_485
MAX_ANIMATION_PIXELS = 1 << 30  # every frame of a GIF is held until it is written: 3 GB as RGB
MAX_PLOTTED_POINTS = 1_000_000  # a 512x512 scatter plot shows no more; each point is a Python object


def latent_draws(count: int, n: int, latent_dim: int, seed: int, truncation: float | None = None) -> torch.Tensor:
    """(count, n, latent_dim) standard normal latents, truncated at `truncation` if given; draw 0 is
    the grid's latents for `seed`."""
    rng = torch.Generator().manual_seed(seed)
    return torch.stack([truncated_latents(n, latent_dim, rng, truncation) for _ in range(count)])


def slerp(start: torch.Tensor, end: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of (..., D) latents at fractions t (T,): (T, ..., D); exact at t = 0 and 1.

    A d-dimensional standard normal vector has norm close to sqrt(d), so the training latents lie
    near a sphere; the straight line between two of them dips inside it (to norm ~sqrt(d/2) at the
    midpoint), where the generator never saw an input. The great circle stays on the shell
    (White 2016, "Sampling Generative Networks")."""
    cos_angle = torch.nn.functional.cosine_similarity(start.double(), end.double(), dim=-1).clamp(-1, 1)
    angle = torch.arccos(cos_angle)[None, ..., None]
    t = t.double().reshape(-1, *[1] * start.dim())
    sin_angle = torch.sin(angle)
    # (Anti)parallel latents make the sine ratios 0/0; the chord stands in (parallel: the same path
    # to rounding; opposite: no single great circle). Random latents of any real size are neither.
    parallel = sin_angle < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin_angle), sin_angle)
    weight_start = torch.where(parallel, 1 - t, torch.sin((1 - t) * angle) / safe)
    weight_end = torch.where(parallel, t, torch.sin(t * angle) / safe)
    return (weight_start * start.double() + weight_end * end.double()).to(start.dtype)


def interpolation_latents(n: int, steps: int, latent_dim: int, seed: int, truncation: float | None = None) -> torch.Tensor:
    """(n * steps, latent_dim), row by row: row i goes from the grid's latent i to a second draw's."""
    start, end = latent_draws(2, n, latent_dim, seed, truncation)
    path = slerp(start, end, torch.linspace(0, 1, steps))  # (steps, n, D)
    return rearrange(path, "t n d -> (n t) d")


def loop_latents(
    n: int, frames: int, keyframes: int, latent_dim: int, seed: int, truncation: float | None = None
) -> torch.Tensor:
    """(frames, n, latent_dim): a closed walk through `keyframes` draws, evenly spaced in frames, so
    frame k * frames / keyframes (when whole) is keyframe k and the last frame leads back to the first."""
    keys = latent_draws(keyframes, n, latent_dim, seed, truncation)
    position = torch.arange(frames, dtype=torch.float64) * keyframes / frames
    segment, fraction = position.floor().long(), position - position.floor()
    return torch.stack(
        [slerp(keys[s], keys[(s + 1) % keyframes], f.reshape(1))[0] for s, f in zip(segment.tolist(), fraction)]
    )


class UsageError(ValueError):
    """A bad flag value or combination; the message names the flag and the fix."""


def _check_output(output: Path, allowed: tuple[str, ...], why: str) -> None:
    if output.suffix not in allowed:
        hint = "; or add --gif for an animation" if output.suffix == ".gif" and why == "this run" else ""
        raise UsageError(f"--output {output}: {why} writes {' or '.join(allowed)} files; change the file extension{hint}")


def _check_at_least(name: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise UsageError(f"--{name} {value}: must be at least {minimum}")


def save_picture(frames: list[Image.Image], path: Path, fps: float = DEFAULT_FPS) -> None:
    """A .gif: the frames as a loop; otherwise a PNG of the first."""
    if path.suffix == ".gif":
        write_gif(frames, path, round(1000 / fps))
    else:
        save_png(frames[0], path)


def _check_picture(finished: FinishedRun, n: int, columns: int | None = None, frames: int = 1) -> None:
    """Refuse a picture (a grid, an interpolation strip of `columns`, each of `frames` GIF frames)
    beyond what generate.py holds in memory and others can open."""
    if finished.is_points:
        if n > MAX_PLOTTED_POINTS:
            raise UsageError(f"--n {n}: a scatter plot of more than {MAX_PLOTTED_POINTS} points shows nothing more on its"
                             " 512x512 pixels; lower --n, or write the points to a .npy")
        return
    side = finished.config.resolution
    pixels = grid_pixels(n, side, columns)
    if pixels > MAX_PICTURE_PIXELS:
        fits = bisect.bisect_right(range(1, n + 1), MAX_PICTURE_PIXELS, key=lambda count: grid_pixels(count, side, columns))
        what = f"a strip of {n} rows of {columns} samples" if columns else f"a grid of {n} samples"
        raise UsageError(
            f"--n {n}: {what} of {side} px would be a picture of {pixels / 1e6:,.0f} Mpx, beyond the"
            f" {MAX_PICTURE_PIXELS / 1e6:.0f} Mpx Pillow opens without a decompression-bomb warning; lower --n (at most {fits}"
            " fit), or write the samples to a .npy (any --n the disk holds)"
        )
    if frames * pixels > MAX_ANIMATION_PIXELS:
        raise UsageError(f"--n {n} --frames {frames}: the frames would hold {frames * pixels / 1e6:,.0f} Mpx until written,"
                         f" beyond {MAX_ANIMATION_PIXELS / 1e6:,.0f} Mpx; lower --n or --frames")


def grid_pixels(n: int, side: int, columns: int | None = None) -> int:
    """The pixels of image_grid's picture of `n` images of `side` px."""
    columns = columns or math.ceil(math.sqrt(n))
    return (columns * (side + PADDING) + PADDING) * (math.ceil(n / columns) * (side + PADDING) + PADDING)


def generate(
    run: Path, n: int, output: Path, seed: int = 0, checkpoint: Path | None = None, device: str = "cpu",
    truncation: float | None = None,
) -> None:
    finished = FinishedRun(run)
    _check_output(output, (".npy", ".png"), "this run")
    _check_at_least("n", n, 1)
    check_writable("--output", output)
    if output.suffix == ".npy":
        _check_disk(output, *npy_layout(finished, n))
    else:
        _check_picture(finished, n)
    generator, _ = finished.ema_generator(checkpoint, device)
    with written("--output", output):
        if output.suffix == ".npy":
            atomic_write(output, lambda tmp: write_samples_npy(tmp, finished, generator, n, seed, truncation))
        else:
            samples = render_samples(generator, latent_draws(1, n, finished.config.latent_dim, seed, truncation)[0])
            save_picture([samples_picture(samples, *finished.modes())], output)


def npy_layout(finished: FinishedRun, n: int) -> tuple[tuple[int, ...], type]:
    """The shape and dtype of the .npy of `n` samples: points in data coordinates, or uint8 images."""
    if finished.is_points:
        return (n, 2), np.float32
    return (n, 3, finished.config.resolution, finished.config.resolution), np.uint8


def write_samples_npy(
    path: Path, finished: FinishedRun, generator: torch.nn.Module, n: int, seed: int, truncation: float | None = None
) -> None:
    """The grid's `n` samples for `seed` as a .npy (npy_layout), a chunk at a time."""
    shape, dtype = npy_layout(finished, n)
    chunk = npy_chunk(math.prod(shape[1:]))
    chunks = sample_chunks(generator, n, finished.config.latent_dim, seed, chunk, truncation)
    write_npy(path, shape, dtype, (samples.numpy() if finished.is_points else to_uint8(samples).numpy() for samples in chunks))


def _check_disk(output: Path, shape: tuple[int, ...], dtype: type) -> None:
    """Refuse a .npy larger than the free space where it goes, before a byte of it is written."""
    needed = math.prod(shape) * np.dtype(dtype).itemsize
    folder = next(p for p in output.absolute().parents if p.exists())
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UsageError(f"--n {shape[0]}: the .npy would take {needed / 1e9:,.1f} GB, and {folder} has {free / 1e9:,.1f} GB"
                         " free; lower --n, or point --output at a disk with room")


def npy_chunk(sample_values: int) -> int:
    """Samples per chunk of a .npy whose samples hold `sample_values` values each."""
    return max(16, min(NPY_CHUNK, NPY_CHUNK_VALUES // sample_values) // 16 * 16)


def sample_chunks(
    generator: torch.nn.Module, n: int, latent_dim: int, seed: int, chunk: int, truncation: float | None = None
) -> Iterator[torch.Tensor]:
    """The samples of the grid's latents for `seed` (latent_draws(1, n, ...)[0]), drawn `chunk` (a
    multiple of 16) at a time. The same numbers as one draw wherever n * latent_dim is a multiple
    of 16: torch's CPU sampler fills normal values 16 at a time (tests/test_generate.py holds it);
    truncated latents are drawn 16 rows at a time in both (TRUNCATION_BLOCK)."""
    rng = torch.Generator().manual_seed(seed)
    for start in range(0, n, chunk):
        yield render_samples(generator, truncated_latents(min(chunk, n - start), latent_dim, rng, truncation))


def write_npy(path: Path, shape: tuple[int, ...], dtype: type, chunks: Iterable[np.ndarray]) -> None:
    """A .npy of `shape`, written from `chunks` along its first axis as they come: memory holds one
    chunk (a memory map would keep every page written among the process's own)."""
    with open(path, "wb") as file:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(file, header)
        rows = 0
        for chunk in chunks:
            if chunk.shape[1:] != shape[1:] or chunk.dtype != dtype:
                raise ValueError(f"a chunk of {chunk.dtype} {chunk.shape} in a .npy of {np.dtype(dtype)} {shape}")
            file.write(np.ascontiguousarray(chunk).data)
            rows += len(chunk)
    if rows != shape[0]:
        raise ValueError(f"{rows} rows written to a .npy of {shape[0]}")


def interpolate(
    run: Path, n: int, steps: int, output: Path, seed: int = 0, checkpoint: Path | None = None, device: str = "cpu",
    truncation: float | None = None,
) -> None:
    finished = FinishedRun(run)
    if finished.is_points:
        raise UsageError(
            f"--interpolate: --run {run} is a toy run (2-D points), which has no images to put in a strip;"
            " use --gif for an animated scatter plot"
        )
    _check_output(output, (".png",), "--interpolate")
    _check_at_least("n", n, 1)
    _check_at_least("interpolate", steps, 2)
    check_writable("--output", output)
    _check_picture(finished, n, columns=steps)
    generator, _ = finished.ema_generator(checkpoint, device)
    images = render_samples(generator, interpolation_latents(n, steps, finished.config.latent_dim, seed, truncation))
    with written("--output", output):
        save_picture([image_grid(images, columns=steps)], output)


def animate(
    run: Path,
    n: int,
    output: Path,
    frames: int = DEFAULT_FRAMES,
    fps: float = DEFAULT_FPS,
    keyframes: int = DEFAULT_KEYFRAMES,
    seed: int = 0,
    checkpoint: Path | None = None,
    device: str = "cpu",
    truncation: float | None = None,
) -> None:
    finished = FinishedRun(run)
    _check_output(output, (".gif",), "--gif")
    _check_at_least("n", n, 1)
    _check_at_least("keyframes", keyframes, 2)
    _check_at_least("frames", frames, keyframes)
    if not 0 < fps <= MAX_FPS:
        raise UsageError(f"--fps {fps}: must be above 0 and at most {MAX_FPS}")
    check_writable("--output", output)
    _check_picture(finished, n, frames=frames)
    generator, _ = finished.ema_generator(checkpoint, device)
    modes, std = finished.modes()
    pictures = []
    # One frame at a time: 48 frames of 16 samples at 1024 px would be 10 GB of floats.
    for latents in loop_latents(n, frames, keyframes, finished.config.latent_dim, seed, truncation):
        pictures.append(samples_picture(render_samples(generator, latents), modes, std))
    with written("--output", output):
        save_picture(pictures, output, fps)


def _given_or(value, default):
    return default if value is None else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the training run's --out folder, or hf:USER/NAME (train/publish.py)")
    parser.add_argument("--n", type=int, default=None, help="samples: 64 in a grid, 8 strip rows, 16 per GIF frame")
    parser.add_argument("--output", type=Path, required=True, help="a .png grid or strip, a .gif, or a .npy of uint8 images (toy runs: points)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents (default: 0)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint folder (default: the latest)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--truncation", type=truncation_psi, default=None, metavar="PSI", help=TRUNCATION_HELP)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--interpolate", type=int, metavar="K", help="write a .png strip: each row interpolates two latents in K steps")
    mode.add_argument("--gif", action="store_true", help="write a .gif of the grid walking a loop through latent space")
    animation = parser.add_argument_group("--gif options")
    animation.add_argument("--frames", type=int, default=None, help=f"frames in the loop (default: {DEFAULT_FRAMES})")
    animation.add_argument("--fps", type=float, default=None, help=f"frames per second (default: {DEFAULT_FPS:g})")
    animation.add_argument(
        "--keyframes", type=int, default=None, help=f"random latents the loop passes through (default: {DEFAULT_KEYFRAMES})"
    )
    args = parser.parse_args(argv)

    given = [f"--{name}" for name in ("frames", "fps", "keyframes") if getattr(args, name) is not None]
    if given and not args.gif:
        parser.error(f"{', '.join(given)} only apply with --gif")
    try:
        write(args)
    except (UsageError, RunNotFound, Unwritable) as error:
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    return 0


def write(args: argparse.Namespace) -> None:
    common = {"seed": args.seed, "checkpoint": args.checkpoint, "device": args.device, "truncation": args.truncation}
    if args.interpolate is not None:
        n = _given_or(args.n, DEFAULT_N["interpolate"])
        interpolate(args.run, n, args.interpolate, args.output, **common)
        print(f"wrote {n} interpolations of {args.interpolate} steps to {args.output}")
    elif args.gif:
        n, frames = _given_or(args.n, DEFAULT_N["gif"]), _given_or(args.frames, DEFAULT_FRAMES)
        fps, keyframes = _given_or(args.fps, DEFAULT_FPS), _given_or(args.keyframes, DEFAULT_KEYFRAMES)
        animate(args.run, n, args.output, frames, fps, keyframes, **common)
        print(f"wrote a loop of {frames} frames of {n} samples to {args.output}")
    else:
        n = _given_or(args.n, DEFAULT_N["grid"])
        generate(args.run, n, args.output, **common)
        print(f"wrote {n} samples to {args.output}")


if __name__ == "__main__":
    sys.exit(main())
