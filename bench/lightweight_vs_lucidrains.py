"""Training steps of this project's lightweight GAN against lucidrains' lightweight-gan, same settings.

    python bench/lightweight_vs_lucidrains.py                      # CPU: ours alone, 128 and 256 px
    pip install lightweight-gan==1.2.1                             # on a GPU: the side-by-side comparison
    python bench/lightweight_vs_lucidrains.py [--resolutions 256 1024] [--precisions fp16 bf16]
    python bench/lightweight_vs_lucidrains.py --max-batch --resolutions 1024 --precisions fp16

A step is one discriminator update (DiffAugment on real and fake, the decoders' reconstruction
loss on real images), then one generator update, on a synthetic real batch already on the device:
no data loading. Ours is `train.run.phases.Phases.step` under the trainer's Accelerator; theirs is
the body of their `Trainer.train`, with their modules and losses. After `--warmup` untimed steps
each, the two alternate (`--steps` each, `--rounds` times); img/s is real images through the
discriminator per second, median over rounds. `--max-batch` finds on a GPU the largest batch each
trains at (doubling, then bisecting).

The same for both: resolution, batch, latent size, widths (4096 / size, at most 512), attention
sizes, DiffAugment transformations, 5x5 logits, hinge loss; no gradient penalty, no EMA. As each
has it: their DiffAugment takes the whole batch with probability `aug_prob` and adds a random
flip, ours draws per image and transformation; their Trainer adds a gradient penalty every 4th
step (left out here; ours is off by default), leaves cuDNN autotuning off (ours turns it on), and
has fp16 autocast + GradScaler (`amp`) but no bf16: bf16 is their step under bf16 autocast.

lightweight-gan is a benchmark-only dependency, not in requirements.txt. It asserts CUDA at
import: without a GPU this script measures our trainer alone.
"""
import argparse
import contextlib
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from typing import Callable

import accelerate
import torch

from bench.measure import (
    CUDA,
    DEVICE,
    PeakMemory,
    memory_in_use,
    release,
    significant,
    synchronize,
)
from bench.trainer_step import trainer_phases
from train.gan.diffaugment import parse_policy
from train.lightweight_gan import LightweightGANConfig, make_objective
from train.run.config import resolve_config
from train.run.precision import PRECISIONS, resolve_mixed_precision

LUCIDRAINS = "lightweight-gan==1.2.1"
Step = Callable[[], None]


def synthetic_reals(config: LightweightGANConfig) -> torch.Tensor:
    shape = (config.batch_size, 3, config.resolution, config.resolution)
    return torch.rand(shape, generator=torch.Generator().manual_seed(config.seed)).mul(2).sub(1).to(DEVICE)


def ours(config: LightweightGANConfig) -> tuple[Step, int]:
    """The trainer's own step (bench/trainer_step.py); returns (one step, real images per step)."""
    phases = trainer_phases(config, make_objective, real_batch=lambda config, device, rng: synthetic_reals(config))

    def step() -> None:
        phases.step()

    return step, config.batch_size * config.critic_steps * config.grad_accum


def lucidrains(config: LightweightGANConfig, precision: str, folder: str) -> tuple[Step, int]:
    """Their Trainer.train (lightweight_gan.py, v1.2.1) for one step at gradient_accumulate_every=1,
    without the every-4th-step gradient penalty, the EMA (off before step 20000) and the logging."""
    from lightweight_gan import Trainer
    from lightweight_gan.lightweight_gan import gen_hinge_loss, hinge_loss, raise_if_nan

    aug_types = list(parse_policy(config.diffaug_policy))
    trainer = Trainer(
        base_dir=folder, use_aim=False, image_size=config.resolution, latent_dim=config.latent_dim,
        fmap_max=config.channel_max, batch_size=config.batch_size, attn_res_layers=list(config.attn_resolutions),
        disc_output_size=5, aug_types=aug_types, aug_prob=config.diffaug_probability if aug_types else 0.0,
        amp=precision == "fp16", lr=config.lr,
    )
    trainer.init_GAN()  # also sets their module globals (BatchNorm2d, no blur) as their train() does
    gan, batch, latent_dim = trainer.GAN, config.batch_size, config.latent_dim
    gan.train()
    G, D_aug = gan.G, gan.D_aug
    aug_kwargs = {"prob": trainer.aug_prob, "types": trainer.aug_types}
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    amp_context = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype else contextlib.nullcontext
    image_batch = synthetic_reals(config)

    def train_step() -> None:
        gan.D_opt.zero_grad()
        latents = torch.randn(batch, latent_dim).cuda(0)
        with amp_context():
            with torch.no_grad():
                generated_images = G(latents)
            fake_output, fake_output_32x32, _ = D_aug(generated_images, detach=True, **aug_kwargs)
            real_output, real_output_32x32, real_aux_loss = D_aug(image_batch, calc_aux_loss=True, **aug_kwargs)
            divergence = hinge_loss(real_output, fake_output)
            disc_loss = divergence + hinge_loss(real_output_32x32, fake_output_32x32) + real_aux_loss
        disc_loss.register_hook(raise_if_nan)
        trainer.D_scaler.scale(disc_loss).backward()
        trainer.last_recon_loss = real_aux_loss.item()
        trainer.d_loss = float(divergence.item())
        trainer.D_scaler.step(gan.D_opt)
        trainer.D_scaler.update()

        gan.G_opt.zero_grad()
        latents = torch.randn(batch, latent_dim).cuda(0)
        with amp_context():
            generated_images = G(latents)
            fake_output, fake_output_32x32, _ = D_aug(generated_images, **aug_kwargs)
            loss = gen_hinge_loss(fake_output, None)
            gen_loss = loss + gen_hinge_loss(fake_output_32x32, None)
        gen_loss.register_hook(raise_if_nan)
        trainer.G_scaler.scale(gen_loss).backward()
        trainer.g_loss = float(loss.item())
        trainer.G_scaler.step(gan.G_opt)
        trainer.G_scaler.update()

    def step() -> None:
        # Their Trainer leaves cuDNN autotuning off; ours turns it on (train.run.build.make_accelerator).
        autotune, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
        train_step()
        torch.backends.cudnn.benchmark = autotune

    return step, batch


def compare(sides: dict[str, Callable[[], tuple[Step, int]]], args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """{side: (img/s, peak MiB)}: built and warmed up in turn, then timed in alternation."""
    steps, resident, images = {}, {}, {}
    for name, build in sides.items():
        before = memory_in_use()
        steps[name], images[name] = build()
        for _ in range(args.warmup):
            steps[name]()
        synchronize()
        resident[name] = memory_in_use() - before  # weights, optimizer state, the real batch
    seconds = {name: [] for name in sides}
    peaks = {name: 0 for name in sides}
    for _ in range(args.rounds):
        for name, step in steps.items():
            synchronize()
            with PeakMemory() as memory:
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                synchronize()
                seconds[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], memory.peak)
    del steps
    release()
    return {
        name: (images[name] * args.steps / statistics.median(seconds[name]), (resident[name] + peaks[name]) / 2**20)
        for name in sides
    }


def fits(build: Callable[[], tuple[Step, int]]) -> bool:
    step = None
    try:
        step, _ = build()
        for _ in range(3):  # later steps hold Adam's states too (unless fp16 overflow skips them all)
            step()
        synchronize()
        return True
    except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
        if not isinstance(error, torch.cuda.OutOfMemoryError) and not any(
            sign in str(error) for sign in ("out of memory", "ALLOC_FAILED")  # cuDNN / cuBLAS workspaces
        ):
            raise
        return False
    finally:
        del step
        release()


def largest_batch(fits_at: Callable[[int], bool], start: int, cap: int = 4096) -> int:
    low, high = 0, start
    while high <= cap and fits_at(high):
        low, high = high, 2 * high
    if high > cap:
        return low
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits_at(mid) else (low, mid)
    return low


def row(resolution: int, precision: str, args: argparse.Namespace, tmp: str, with_theirs: bool) -> list[str]:
    def config_at(batch: int) -> LightweightGANConfig:
        return resolve_config(LightweightGANConfig, {
            "data": "synthetic", "resolution": resolution, "batch_size": batch, "mixed_precision": precision,
            "attn_resolutions": tuple(args.attn_resolutions), "diffaug_policy": args.diffaug_policy,
            "diffaug_probability": args.diffaug_probability, "out": tmp,  # an empty folder: no run to clash with
        })

    sides = {"ours": lambda batch: ours(config_at(batch))}
    if with_theirs:
        sides["lucidrains"] = lambda batch: lucidrains(config_at(batch), precision, os.path.join(tmp, "lucidrains"))
    if args.max_batch:
        cells = [str(largest_batch(lambda b: fits(lambda: build(b)), args.batch_size)) for build in sides.values()]
        return cells + ["—"] * (2 - len(cells))
    results = compare({name: partial(build, args.batch_size) for name, build in sides.items()}, args)
    cells = [str(args.batch_size)] + [significant(x) for rate_mib in results.values() for x in rate_mib]
    if not with_theirs:
        return cells + ["—", "—", "—"]
    return cells + [f"{results['ours'][0] / results['lucidrains'][0]:.2f}×"]


def main() -> None:
    defaults = LightweightGANConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024] if CUDA else [128, 256])
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size if CUDA else 8)
    parser.add_argument("--precisions", "--precision", nargs="+", choices=PRECISIONS,
                        default=["fp16", "bf16"] if CUDA else ["no"])
    parser.add_argument("--attn-resolutions", type=int, nargs="*", default=list(defaults.attn_resolutions))
    parser.add_argument("--diffaug-policy", default=defaults.diffaug_policy)
    parser.add_argument("--diffaug-probability", type=float, default=defaults.diffaug_probability)
    parser.add_argument("--steps", type=int, default=20 if CUDA else 2, help="timed steps per side per round")
    parser.add_argument("--warmup", type=int, default=5 if CUDA else 1, help="untimed steps per side first")
    parser.add_argument("--rounds", type=int, default=5 if CUDA else 3)
    parser.add_argument("--max-batch", action="store_true", help="largest batch each trains at (GPU only)")
    args = parser.parse_args()

    if args.max_batch and not CUDA:
        sys.exit("--max-batch needs a CUDA GPU: on the CPU a batch does not run out of memory, it slows down")
    theirs = None
    if not CUDA:
        print(f"lucidrains' lightweight-gan needs a CUDA GPU (it asserts one at import): measuring ours alone;"
              f" for the comparison, on a GPU: pip install {LUCIDRAINS} && python bench/lightweight_vs_lucidrains.py")
    else:
        try:
            import lightweight_gan  # noqa: F401  (asserts CUDA)
            theirs = importlib.metadata.version("lightweight-gan")
        except ImportError:
            print(f"lightweight-gan is not installed: measuring ours alone; pip install {LUCIDRAINS} for the comparison")

    device = torch.cuda.get_device_name() if CUDA else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    print(f"{device}; torch {torch.__version__}, accelerate {accelerate.__version__}"
          + (f", lightweight-gan {theirs}" if theirs else ""))
    print(f"attention at {args.attn_resolutions or 'none'}, DiffAugment {args.diffaug_policy!r} "
          f"(p={args.diffaug_probability}); " + ("largest batch that trains" if args.max_batch else
          f"{args.warmup} warm-up + {args.steps} timed steps per side, median of {args.rounds} alternating rounds"))
    memory = "peak CUDA MiB¹" if CUDA else "peak RSS rise MiB¹"
    header = (["resolution", "precision", "ours max batch", "lucidrains max batch"] if args.max_batch else
              ["resolution", "precision", "batch", "ours img/s", f"ours {memory}", "lucidrains img/s",
               f"lucidrains {memory}", "ours / lucidrains"])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            precision = resolve_mixed_precision(precision, use_cpu=not CUDA)
            for resolution in args.resolutions:
                cells = row(resolution, precision, args, tmp, with_theirs=theirs is not None)
                print("| " + " | ".join([str(resolution), precision, *cells]) + " |", flush=True)
    if not args.max_batch:
        print("\n¹ " + ("torch.cuda.max_memory_allocated over the timed steps less the other side's tensors: this"
                        " side's weights, optimizer state and real batch, plus its steps' peak above them." if CUDA else
                        "rise of the process's resident set (psutil, sampled every 5 ms) from before the networks"
                        " were built to its peak over the timed steps: a lower bound where freed memory is reused."))

if __name__ == "__main__":
    main()
