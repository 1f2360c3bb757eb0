"""Judged by the images it makes: each recipe trained for the same CPU time on Stacked MNIST, then
its EMA generator's samples scored by the project's digit classifier (train/report/stacked_mnist.py).

    python bench/stacked_mnist.py --quick     # every recipe, 1 seed, 1 CPU-minute each, 5,000 samples: under 10 min on 2 cores
    python bench/stacked_mnist.py             # every recipe, 2 seeds, 5 CPU-minutes each, 26,000 samples: about an hour on 2 cores
    python bench/stacked_mnist.py --recipes gan,pack4 --seeds 3 --minutes 10 --networks metz-half --out runs/smbench

Equal CPU time: each run is one trainer process on one OpenMP thread, `--jobs` of them side by
side (one per core), sent SIGTERM (the trainers' stop signal: a checkpoint, then exit 75) once its
own CPU time, start-up included, reaches the budget, so the runs stay equal when something else
shares the machine; a `--max-steps` it never reaches, and `--time-limit` at three budgets and five
minutes as a backstop. The table says how many generator steps each recipe made of its
CPU-minutes. Scores: modes covered of 1,000, reverse KL(p_gen || uniform) in nats and the Fréchet distance in the classifier's features, of `--samples` samples of the EMA
generator drawn as `train/evaluate.py --run DIR --samples N` draws them (the same numbers); mean ±
sample standard deviation over seeds; the real-data floor is as many real samples' scores.

The recipes' settings, for 32 px on a CPU:
- Batch 64 for every DCGAN-pair recipe, as in PacGAN's, VEEGAN's and Metz et al.'s Stacked MNIST runs.
- Networks: the project's DCGAN pair at `--channel-base 512` (generator 128-64-32 feature maps from
  4x4 up, discriminator 32-64-128 down), a quarter of the tutorial's widths: a step costs about
  85 ms on one core against 950 ms at the default widths, so 5 minutes buy thousands of generator
  steps rather than a few hundred. `--networks X` hands the DCGAN recipes train/dcgan.py's network
  preset X instead (the preset then decides the widths); WGAN-GP and the lightweight GAN keep theirs.
- Label smoothing + instance noise: real target 0.9 (Salimans et al. 2016) and Gaussian noise of
  std 0.1 (5% of the [-1, 1] range) annealed as exp(-4 t / T) with T = 400 steps per CPU-minute:
  gone (2%) by about two thirds of the steps a plain run makes in its budget here.
- Look-ahead unrolled discriminator, k = 5 (Metz et al. used 10; k costs about linearly, and 5
  already takes 3.4x a plain step here: 10 would leave it a sixth of the plain GAN's steps).
- PacGAN 2 and 4: the discriminator judges packs of 2 or 4 samples (Lin et al. 2018).
- WGAN-GP: the paper's lambda 10, 5 critic steps, Adam 1e-4 (0, 0.9), on the same DCGAN pair
  with layer norm in the critic (the penalty is per sample: no BatchNorm), so that the objective is
  what differs.
- RpGAN + R1 + R2 (R3GAN) and NS + R1 (StyleGAN2): gamma 0.05 for each penalty, the order that
  StyleGAN2's rule (gamma grows with resolution squared) gives at 32 px (StyleGAN2-ADA's CIFAR-10
  setting is 0.01); no normalisation in their discriminators, as R3GAN's and StyleGAN2's, since
  the penalties are per sample. Not tuned here.
- The lightweight GAN (FastGAN) at 32 px, its own batch 16, DiffAugment and decoders, also at
  `--channel-base 512` (at its default widths a step takes 2.9 s on one core).
"""
import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from train.run.flags import ConfigError, build_parser, check_limits, flag

if TYPE_CHECKING:  # torch and the scorer cost seconds to import: a bad flag answers before them
    from torch import nn

    from train.report.stacked_mnist import Reference

MAX_STEPS = 10_000_000  # never reached: the CPU budget ends every run
BACKSTOP_S = (3, 300)  # --time-limit = 3 x the budget + 300 s of wall clock: a run that a busy machine starves still ends
NOISE_STEPS_PER_MINUTE = 400  # instance noise's T: a plain run makes about 700 steps a CPU-minute here
# Measured on one core of the 2-core machine: 26,000 samples generated and classified in about 20 s;
# a run's checkpoint and exit after its time limit, a few seconds.
SCORING_S_PER_1000_SAMPLES = 0.8
STOP_S = 5
FULL = {"minutes": 5.0, "seeds": 2, "samples": 26_000}
QUICK = {"minutes": 1.0, "seeds": 1, "samples": 5_000}
# Every run: the data, one CPU process, no W&B or FID, and a step budget the time limit always cuts
# short; a checkpoint at the stop (the trainer writes one) and a sample grid every 500 steps.
SHARED_FLAGS = (
    "--data", "stacked-mnist", "--resolution", "32", "--cpu", "--wandb-mode", "disabled", "--fid-every", "0",
    "--max-steps", str(MAX_STEPS), "--ckpt-every", str(MAX_STEPS), "--keep-checkpoints", "1",
    "--log-every", "100", "--sample-every", "500",
)
NARROW = ("--channel-base", "512")
BATCH = 64


@dataclass(frozen=True)
class Recipe:
    title: str  # the table's words
    script: str
    flags: tuple[str, ...] = ()  # what makes the recipe; "{noise_steps}" stands for instance noise's T
    batch_size: int | None = BATCH  # None: the trainer's own
    takes_preset: bool = True  # a train/dcgan.py recipe: --networks X replaces NARROW


DCGAN = "train/dcgan.py"
GAMMA = "0.05"
RECIPES: dict[str, Recipe] = {
    "gan": Recipe("non-saturating GAN (DCGAN)", DCGAN),
    "smooth+noise": Recipe(
        "+ label smoothing 0.9 + instance noise 0.1", DCGAN,
        ("--real-label", "0.9", "--instance-noise", "0.1", "--instance-noise-steps", "{noise_steps}"),
    ),
    "lookahead5": Recipe("+ look-ahead unrolled D, k = 5", DCGAN, ("--unrolled-steps", "5", "--unroll-mode", "lookahead")),
    "pack2": Recipe("PacGAN 2", DCGAN, ("--pack", "2")),
    "pack4": Recipe("PacGAN 4", DCGAN, ("--pack", "4")),
    "wgangp": Recipe("WGAN-GP", "train/wgangp.py", ("--model", "dcgan"), takes_preset=False),
    "rpgan+r1+r2": Recipe(
        "RpGAN + R1 + R2 (R3GAN's loss)", DCGAN, ("--loss", "rpgan", "--r1-weight", GAMMA, "--r2-weight", GAMMA, "--critic-norm", "none"),
    ),
    "ns+r1": Recipe("NS + R1 (StyleGAN2's loss)", DCGAN, ("--r1-weight", GAMMA, "--critic-norm", "none")),
    "lightweight": Recipe("lightweight GAN (FastGAN)", "train/lightweight_gan.py", batch_size=None, takes_preset=False),
}

# PacGAN (Lin et al. 2018), Tables 2 and 3 (fjxmlzn/PacGAN, stacked_MNIST_experiments/results/):
# (networks, method, modes of 1,000, reverse KL); 100,000-500,000 generator iterations on a GPU.
PUBLISHED = (
    ("VEEGAN's", "DCGAN", "99.0", "3.40"),
    ("VEEGAN's", "Unrolled GAN", "48.7", "4.32"),
    ("VEEGAN's", "VEEGAN", "150.0", "2.95"),
    ("VEEGAN's", "PacDCGAN2", "1000.0 ± 0.0", "0.06 ± 0.003"),
    ("Metz et al.'s, D = ¼ G", "DCGAN", "30.6 ± 20.7", "5.99 ± 0.42"),
    ("Metz et al.'s, D = ¼ G", "Unrolled GAN, 10 steps", "327.2 ± 74.7", "4.66 ± 0.46"),
    ("Metz et al.'s, D = ¼ G", "PacDCGAN4", "667.4 ± 29.0", "1.81 ± 0.15"),
    ("Metz et al.'s, D = ½ G", "DCGAN", "628.0 ± 140.9", "2.58 ± 0.75"),
    ("Metz et al.'s, D = ½ G", "Unrolled GAN, 10 steps", "817.4 ± 37.9", "1.43 ± 0.12"),
    ("Metz et al.'s, D = ½ G", "PacDCGAN3", "866.6 ± 12.1", "0.90 ± 0.04"),
)


@dataclass(frozen=True)
class BenchFlags:
    """The command line, each flag declared once with its limits (train/run/flags.py)."""

    quick: bool = flag(False, "every recipe, 1 seed, 1 CPU-minute each, 5,000 samples scored: under 10 minutes on 2 cores")
    recipes: str = flag(",".join(RECIPES), f"comma-separated, of {', '.join(RECIPES)}", non_empty=True)
    minutes: float | None = flag(None, "CPU-minutes per run, one core each (default 5; --quick: 1)", min=0.0, exclusive_min=True, example="5", type=float)
    seeds: int | None = flag(None, "seeds per recipe, 0..N-1 (default 2; --quick: 1)", min=1, type=int)
    samples: int | None = flag(
        None, "samples of each run's EMA generator scored (default 26000, PacGAN's; --quick: 5000)", min=2,
        why="the Fréchet distance needs 2", type=int,
    )
    jobs: int = flag(len(os.sched_getaffinity(0)), "runs at a time, one thread each (default: one per core)", min=1)
    networks: str | None = flag(None, "train/dcgan.py's --networks preset for the DCGAN recipes (default: the project's pair at --channel-base 512)")
    out: str | None = flag(None, "a new folder for the runs, results.json and table.md (default: runs/bench-stacked-mnist/DATE-TIME)", non_empty=True)


@dataclass(frozen=True)
class Settings:
    """What the bench runs, every default resolved."""

    recipes: tuple[str, ...]
    minutes: float
    seeds: int
    samples: int
    jobs: int
    networks: str | None
    out: Path
    quick: bool

    @property
    def seconds(self) -> int:
        return max(1, round(60 * self.minutes))


@dataclass(frozen=True)
class RunResult:
    recipe: str
    seed: int
    command: tuple[str, ...]
    wall_s: float  # start-up included
    cpu_s: float  # what the trainer process got of the machine: about wall_s, where nothing else ran
    step: int | None = None  # the checkpoint scored: the generator steps made in the budget
    modes: float | None = None
    kl: float | None = None
    frechet: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Judge:
    """The digit classifier and the real distribution's statistics, loaded once for every run."""

    classifier: "nn.Module"
    reference: "Reference"

    @classmethod
    def load(cls) -> "Judge":
        from train.report.stacked_mnist import load_classifier, reference_statistics

        classifier = load_classifier()
        return cls(classifier, reference_statistics(classifier))

    def real_floor(self, samples: int) -> dict[str, float]:
        from train.report.stacked_mnist import real_floor

        return real_floor(self.classifier, samples, self.reference)

    def score_run(self, out: Path, samples: int) -> tuple[int | None, dict[str, float]]:
        """(the step of the checkpoint scored, its scores): evaluate.py's samples and numbers."""
        from train.report.stacked_mnist import score_generator
        from train.run.checkpoint import checkpoint_step
        from train.run.finished import FinishedRun

        run = FinishedRun(out)
        generator, checkpoint = run.ema_generator()
        scores = score_generator(generator, run.config.latent_dim, self.classifier, self.reference,
                                 num_samples=samples, batch_size=run.config.batch_size, seed=run.config.seed)
        return checkpoint_step(checkpoint), scores


def network_presets() -> tuple[str, ...]:
    """The choices of train/dcgan.py's --networks; none where this checkout's trainer has no presets."""
    from train.dcgan import DCGANConfig

    field = {f.name: f for f in dataclasses.fields(DCGANConfig)}.get("networks")
    return tuple(field.metadata.get("choices", ())) if field is not None else ()


def settings_from(argv: list[str] | None) -> Settings:
    """The flags, checked and resolved; ConfigError naming the flag and the fix before anything runs."""
    parser = build_parser(BenchFlags, __doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the docstring's lists as written
    given = BenchFlags(**vars(parser.parse_args(argv)))
    check_limits(given)
    recipes = tuple(name.strip() for name in given.recipes.split(",") if name.strip())
    unknown = [name for name in recipes if name not in RECIPES]
    if unknown or not recipes:
        named = f"{', '.join(unknown)} is no recipe" if unknown else "names no recipe"
        raise ConfigError(f"--recipes {given.recipes}: {named}; choose from {','.join(RECIPES)}")
    if given.networks is not None and given.networks not in (presets := network_presets()):
        raise ConfigError(
            f"--networks {given.networks}: " + (f"not one of train/dcgan.py's presets; choose from {', '.join(presets)}" if presets
                                                else "train/dcgan.py in this checkout has no --networks presets yet")
            + ", or leave the flag out for the project's networks"
        )
    out = Path(given.out or f"runs/bench-stacked-mnist/{datetime.datetime.now():%Y%m%d-%H%M%S}").resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {given.out}: already holds files; each run starts from scratch, so choose a new folder")
    defaults = QUICK if given.quick else FULL
    pick = lambda name: defaults[name] if getattr(given, name) is None else getattr(given, name)  # noqa: E731
    return Settings(recipes, float(pick("minutes")), pick("seeds"), pick("samples"), given.jobs, given.networks, out, given.quick)


def recipe_flags(name: str, settings: Settings) -> list[str]:
    """The recipe's own flags, as the table shows them."""
    noise_steps = str(max(1, round(NOISE_STEPS_PER_MINUTE * settings.minutes)))
    return [f.format(noise_steps=noise_steps) for f in RECIPES[name].flags]


def command(name: str, seed: int, settings: Settings) -> list[str]:
    recipe = RECIPES[name]
    networks = ("--networks", settings.networks) if settings.networks and recipe.takes_preset else NARROW
    batch = ("--batch-size", str(recipe.batch_size)) if recipe.batch_size else ()
    return [
        sys.executable, recipe.script, *SHARED_FLAGS, *batch, *networks, *recipe_flags(name, settings),
        "--seed", str(seed), "--time-limit", f"{BACKSTOP_S[0] * settings.seconds + BACKSTOP_S[1]}s", "--out", str(settings.out / f"{name}-seed{seed}"),
    ]


def train_and_score(name: str, seed: int, settings: Settings, judge: Judge) -> RunResult:
    """One run: its trainer on one thread until its CPU budget (exit 75, a checkpoint), then scored."""
    from bench.measure import last_line, run_on_one_thread

    argv = command(name, seed, settings)
    result = run_on_one_thread(argv, settings.out / f"{name}-seed{seed}.log", cpu_budget_s=settings.seconds)
    ran = (name, seed, tuple(argv[1:]), result.wall_s, result.cpu_s)
    if result.returncode not in (0, 75):  # 75: stopped at its CPU budget (or the backstop), as intended
        return recorded(RunResult(*ran, error=f"exit {result.returncode}: {last_line(result.output)}"), settings)
    try:
        step, scores = judge.score_run(settings.out / f"{name}-seed{seed}", settings.samples)
    except Exception as error:  # noqa: BLE001 (one run's failed scoring is that run's row, never the whole table's end)
        return recorded(RunResult(*ran, error=f"scoring failed: {type(error).__name__}: {error}"), settings)
    return recorded(RunResult(*ran, step, **scores), settings)


def recorded(result: RunResult, settings: Settings) -> RunResult:
    """`result`, also written beside its run as `<recipe>-seed<N>.json` as soon as it is known: a
    bench that dies later keeps every finished run's figures."""
    from train.common.atomic import atomic_write_text

    atomic_write_text(settings.out / f"{result.recipe}-seed{result.seed}.json", json.dumps(dataclasses.asdict(result), indent=1) + "\n")
    return result


def run_all(settings: Settings, judge: Judge) -> list[RunResult]:
    """Every (recipe, seed), `--jobs` at a time; the scoring in this process takes one thread too."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with concurrent.futures.ThreadPoolExecutor(settings.jobs) as pool:
            jobs = [pool.submit(train_and_score, name, seed, settings, judge) for seed in range(settings.seeds) for name in settings.recipes]
            results = []
            for job in jobs:
                results.append(job.result())
                done = results[-1]
                print(f"  {done.recipe} seed {done.seed}: " + (done.error or f"step {done.step}, {done.modes:.0f} modes,"
                      f" KL {done.kl:.2f}, Fréchet {done.frechet:.2f}") + f" ({done.wall_s:.0f} s)", flush=True)
            return results
    finally:
        torch.set_num_threads(threads)


def preamble(settings: Settings) -> str:
    runs, rounds = len(settings.recipes) * settings.seeds, math.ceil(len(settings.recipes) * settings.seeds / settings.jobs)
    round_s = settings.seconds + STOP_S + SCORING_S_PER_1000_SAMPLES * settings.samples / 1000
    networks = (f"train/dcgan.py's `--networks {settings.networks}` (WGAN-GP and the lightweight GAN: `--channel-base 512`)"
                if settings.networks else "`--channel-base 512`, the project's pairs at a quarter of the tutorial's widths")
    mode = ("`--quick`: 1 seed, 1-minute runs, 5,000 samples scored (the full table: 5 CPU-minutes, 2 seeds, 26,000 samples)"
            if settings.quick else f"seeds 0..{settings.seeds - 1}")
    return (
        f"Stacked MNIST at equal CPU time, {mode}. Each run {settings.minutes:g} CPU-minute{'s' * (settings.minutes != 1)}:"
        f" one trainer process on one OpenMP thread, stopped (SIGTERM, then its checkpoint) at {settings.seconds} s of its own CPU time,"
        f" {settings.jobs} runs at a time, so {runs} runs take {rounds} rounds, about {rounds * round_s / 60:.0f} minutes"
        f" with the scoring. Every run `--data stacked-mnist --resolution 32 --batch-size {BATCH}` (the lightweight GAN:"
        f" its own 16), networks {networks}. Scored: {settings.samples:,} samples of each run's EMA generator, as"
        f" `train/evaluate.py --run DIR --samples {settings.samples}` draws them; the floor: as many real samples."
    )


def table(settings: Settings, results: list[RunResult], floor: dict[str, float]) -> str:
    from bench.measure import mean_spread

    rows = [
        f"| recipe | trainer and flags | generator steps | CPU s | modes of 1,000 ({settings.samples:,} samples) | reverse KL | Fréchet distance |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name in settings.recipes:
        recipe, runs = RECIPES[name], [r for r in results if r.recipe == name]
        scored, failed = [r for r in runs if r.error is None], [r for r in runs if r.error is not None]
        what = "`" + " ".join([recipe.script, *recipe_flags(name, settings)]) + "`"
        notes += [f"{name}, seed {r.seed} failed: {r.error}" for r in failed]
        if not scored:
            rows.append(f"| {recipe.title} | {what} | failed | | | | |")
            continue
        cells = [mean_spread([getattr(r, key) for r in scored], fmt) for key, fmt in
                 (("step", ".0f"), ("cpu_s", ".0f"), ("modes", ".1f"), ("kl", ".2f"), ("frechet", ".2f"))]
        rows.append(f"| {recipe.title} | {what} | " + " | ".join(cells) + " |")
    rows.append(f"| real data, {settings.samples:,} samples (the floor) | | | | {floor['modes']:.1f} | {floor['kl']:.2f} | {floor['frechet']:.2f} |")
    for networks, method, modes, kl in PUBLISHED:
        rows.append(f"| published: {method} | {networks} networks | 100k-500k | GPU | {modes} | {kl} | |")
    notes.append("published: PacGAN (Lin et al. 2018), Tables 2 and 3, 26,000 samples, their own classifier;"
                 " mean ± standard deviation over their trials")
    return "\n".join(rows + [""] + [f"- {note}" for note in notes])


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    began = time.monotonic()
    print(preamble(settings), flush=True)
    settings.out.mkdir(parents=True, exist_ok=True)
    judge = Judge.load()  # trains the classifier once, when it is not cached yet
    floor = judge.real_floor(settings.samples)
    results = run_all(settings, judge)
    wall = time.monotonic() - began
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU"
    markdown = f"{preamble(settings)}\n\n{table(settings, results, floor)}\n"
    markdown += f"\nMeasured {datetime.date.today()} on a {machine}: {wall:.0f} s in all.\n"
    print("\n" + markdown, flush=True)
    (settings.out / "table.md").write_text(markdown)
    record = {
        "date": str(datetime.date.today()), "machine": machine, "wall_s": wall,
        "settings": {**dataclasses.asdict(settings), "out": str(settings.out), "seconds": settings.seconds},
        "floor": floor, "runs": [dataclasses.asdict(r) for r in results],
    }
    (settings.out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
