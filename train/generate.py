"""Write samples from a run's EMA generator.

    python train/generate.py --run DIR --output FILE [--n N]                    # a grid
    python train/generate.py --run DIR --output FILE.png --interpolate K [--n N]  # interpolation strip
    python train/generate.py --run DIR --output FILE.gif --gif [--n N] [--frames F] [--fps R] [--keyframes M]

Image runs write a PNG grid, or with a .npy output the raw samples as uint8 (N, 3, H, W) (the
exact inverse of the data's scaling; written in chunks, so any N fits in memory); toy runs write a
.npy array of shape (N, 2) in data coordinates (or, with a .png output, a scatter plot over the
true modes).

--interpolate K: a PNG of N rows (default 8), each the generator along the great circle between
two random latents in K steps; the left column is the grid's samples for the same --seed.
--gif: an animated GIF of the grid of N samples (default 16) whose latents walk a closed loop
through M random keyframe latents (default 4) in F frames (default 48) at R frames per second
(default 12); the first frame is the grid's samples for the same --seed. Toy runs animate the
scatter plot instead; they have no interpolation strip.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from train.common.atomic import atomic_write
from train.report.fid import to_uint8
from train.report.gif import write_gif
from train.report.samples import image_grid, samples_picture, save_png
from train.run.finished import FinishedRun, RunNotFound
from train.run.networks import render_samples
from train.run.outcome import BAD_INPUT

DEFAULT_N = {"grid": 64, "interpolate": 8, "gif": 16}
DEFAULT_FRAMES, DEFAULT_FPS, DEFAULT_KEYFRAMES = 48, 12.0, 4
NPY_CHUNK = 1024  # samples per write: 26,000 images of 1024 px would be 80 GB at once
MAX_FPS = 50  # GIF delays are whole centiseconds, and viewers slow anything under 2 cs down to 10 cs


def latent_draws(count: int, n: int, latent_dim: int, seed: int) -> torch.Tensor:
    """(count, n, latent_dim) standard normal latents; draw 0 is the grid's latents for `seed`."""
    rng = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(n, latent_dim, generator=rng) for _ in range(count)])


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


def interpolation_latents(n: int, steps: int, latent_dim: int, seed: int) -> torch.Tensor:
    """(n * steps, latent_dim), row by row: row i goes from the grid's latent i to a second draw's."""
    start, end = latent_draws(2, n, latent_dim, seed)
    path = slerp(start, end, torch.linspace(0, 1, steps))  # (steps, n, D)
    return rearrange(path, "t n d -> (n t) d")


def loop_latents(n: int, frames: int, keyframes: int, latent_dim: int, seed: int) -> torch.Tensor:
    """(frames, n, latent_dim): a closed walk through `keyframes` draws, evenly spaced in frames, so
    frame k * frames / keyframes (when whole) is keyframe k and the last frame leads back to the first."""
    keys = latent_draws(keyframes, n, latent_dim, seed)
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


def generate(run: Path, n: int, output: Path, seed: int = 0, checkpoint: Path | None = None, device: str = "cpu") -> None:
    finished = FinishedRun(run)
    _check_output(output, (".npy", ".png"), "this run")
    _check_at_least("n", n, 1)
    generator, _ = finished.ema_generator(checkpoint, device)
    latents = latent_draws(1, n, finished.config.latent_dim, seed)[0]
    if output.suffix == ".npy" and not finished.is_points:
        atomic_write(output, lambda tmp: write_uint8_samples(generator, latents, tmp))
        return
    samples = render_samples(generator, latents)
    if output.suffix == ".npy":
        atomic_write(output, lambda tmp: np.save(tmp, samples.numpy()))
    else:
        save_picture([samples_picture(samples, *finished.modes())], output)


def write_uint8_samples(generator: torch.nn.Module, latents: torch.Tensor, path: Path) -> None:
    """The images of `latents` as a uint8 (N, 3, H, W) .npy, filled NPY_CHUNK samples at a time."""
    first = to_uint8(render_samples(generator, latents[:1]))
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(latents), *first.shape[1:]))
    for start in range(0, len(latents), NPY_CHUNK):
        array[start:start + NPY_CHUNK] = to_uint8(render_samples(generator, latents[start:start + NPY_CHUNK])).numpy()
    array.flush()
    del array


def interpolate(
    run: Path, n: int, steps: int, output: Path, seed: int = 0, checkpoint: Path | None = None, device: str = "cpu"
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
    generator, _ = finished.ema_generator(checkpoint, device)
    images = render_samples(generator, interpolation_latents(n, steps, finished.config.latent_dim, seed))
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
) -> None:
    finished = FinishedRun(run)
    _check_output(output, (".gif",), "--gif")
    _check_at_least("n", n, 1)
    _check_at_least("keyframes", keyframes, 2)
    _check_at_least("frames", frames, keyframes)
    if not 0 < fps <= MAX_FPS:
        raise UsageError(f"--fps {fps}: must be above 0 and at most {MAX_FPS}")
    generator, _ = finished.ema_generator(checkpoint, device)
    modes, std = finished.modes()
    pictures = []
    # One frame at a time: 48 frames of 16 samples at 1024 px would be 10 GB of floats.
    for latents in loop_latents(n, frames, keyframes, finished.config.latent_dim, seed):
        pictures.append(samples_picture(render_samples(generator, latents), modes, std))
    save_picture(pictures, output, fps)


def _given_or(value, default):
    return default if value is None else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the training run's --out folder")
    parser.add_argument("--n", type=int, default=None, help="samples: 64 in a grid, 8 strip rows, 16 per GIF frame")
    parser.add_argument("--output", type=Path, required=True, help="a .png grid or strip, a .gif, or a .npy of uint8 images (toy runs: points)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents (default: 0)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint folder (default: the latest)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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
    except (UsageError, RunNotFound) as error:
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    return 0


def write(args: argparse.Namespace) -> None:
    common = {"seed": args.seed, "checkpoint": args.checkpoint, "device": args.device}
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
