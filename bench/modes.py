"""Mode coverage of each recipe on the toy mixtures: did a stabiliser matter?

    python bench/modes.py --quick                        # 300 steps, one seed, the grid: a few minutes
    python bench/modes.py                                # 3,000 steps, 3 seeds, ring and grid
    python bench/modes.py --recipes gan gan+pack4 --seeds 5 --steps 5000
    python bench/modes.py --datasets 25gaussians --recipes gan+r1 --minutes 10   # equal CPU time instead of equal steps

The PacGAN protocol (Lin et al. 2018, Table 1; train/report/modes.py): 2,500 samples from the EMA
generator; high quality within 3 standard deviations of the nearest mode; a mode covered by at
least one high-quality sample; reverse KL of the samples' distribution over modes from the uniform
one. Each recipe runs its trainer script as the CLI does (a subprocess, the toy preset, the run's
own checkpoint), `--jobs` at a time with one thread each; wall time includes its start-up. With
`--minutes M` every run gets M CPU-minutes instead of a step count (SIGTERM at the budget, start-up
included: a checkpoint, exit 75) and the table says how many generator steps each recipe made;
instance noise then anneals over NOISE_STEPS_PER_MINUTE x M steps.
Published anchor (PacGAN, about 400k generator steps, 10 trials): grid: GAN 17.3 modes / 94.8% HQ,
PacGAN4 24.8 ± 0.2 / 93.6%; ring: PacGAN2 7.9 / 95.6%.
"""
import argparse
import concurrent.futures
import os
import sys
import tempfile
from pathlib import Path

import torch

from bench.measure import last_line, mean_spread, run_on_one_thread
from train.report.modes import mode_coverage
from train.run.checkpoint import checkpoint_step
from train.run.finished import FinishedRun

SAMPLES = 2500
NEVER = 10_000_000  # a step count an equal-CPU-time run never reaches: its budget ends it
NOISE_STEPS_PER_MINUTE = 1000  # instance noise's T under --minutes: a plain toy run made 689 steps in 30 CPU-s here, start-up included
# name: (trainer script, its flags). "{steps}" is the run's length (instance noise's T).
RECIPES: dict[str, tuple[str, list[str]]] = {
    "wgangp": ("train/wgangp.py", []),  # the toy preset: lambda 0.1, 5 critic steps
    "gan": ("train/dcgan.py", []),  # non-saturating GAN on the toy MLPs
    "gan+smooth": ("train/dcgan.py", ["--real-label", "0.9"]),
    "gan+noise": ("train/dcgan.py", ["--instance-noise", "0.5", "--instance-noise-steps", "{steps}"]),
    "gan+unrolled5": ("train/dcgan.py", ["--unrolled-steps", "5"]),
    "gan+lookahead5": ("train/dcgan.py", ["--unrolled-steps", "5", "--unroll-mode", "lookahead"]),
    "gan+sn": ("train/dcgan.py", ["--d-spectral-norm"]),
    "gan+pack4": ("train/dcgan.py", ["--pack", "4"]),
    "gan+pack4+sn": ("train/dcgan.py", ["--pack", "4", "--d-spectral-norm"]),
    "gan+noise+smooth": ("train/dcgan.py", ["--instance-noise", "0.5", "--instance-noise-steps", "{steps}", "--real-label", "0.9"]),
    # The zero-centred penalties (R1 on real data, R2 on generated): gamma 1, the best of 0.1 and 1 here.
    "gan+r1": ("train/dcgan.py", ["--r1-weight", "1"]),
    "rpgan+r1+r2": ("train/dcgan.py", ["--loss", "rpgan", "--r1-weight", "1", "--r2-weight", "1"]),
}


def command(recipe: str, data: str, steps: int, seed: int, out: Path, minutes: float | None = None) -> list[str]:
    """The run's command line: `steps` generator steps, or with `minutes` a step count it never
    reaches (the bench stops it at its CPU budget) and a wall-clock backstop of 3 budgets + 5 min."""
    script, flags = RECIPES[recipe]
    noise_steps = steps if minutes is None else round(NOISE_STEPS_PER_MINUTE * minutes)
    limit = [] if minutes is None else ["--time-limit", f"{round(180 * minutes + 300)}s"]
    every = str(steps if minutes is None else NEVER)
    return [
        sys.executable, script, "--data", f"toy:{data}", "--max-steps", every, "--seed", str(seed),
        "--out", str(out), "--cpu", "--wandb-mode", "disabled", "--fid-every", "0", "--log-every", every,
        "--sample-every", every, "--ckpt-every", every, *limit, *[f.format(steps=noise_steps) for f in flags],
    ]


def run_one(recipe: str, data: str, steps: int, seed: int, folder: Path, minutes: float | None = None) -> dict:
    out = folder / f"{recipe}-{data}-{seed}"
    budget = None if minutes is None else 60 * minutes
    result = run_on_one_thread(command(recipe, data, steps, seed, out, minutes), folder / f"{recipe}-{data}-{seed}.log", cpu_budget_s=budget)
    if result.returncode not in ((0,) if minutes is None else (0, 75)):  # 75: stopped at its CPU budget, as intended
        return {"recipe": recipe, "data": data, "seed": seed, "error": last_line(result.output)}
    run = FinishedRun(out)
    generator, checkpoint = run.ema_generator()
    centres, std = run.modes()
    noise = torch.randn(SAMPLES, run.config.latent_dim, generator=torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        samples = generator.eval()(noise)
    coverage = mode_coverage(samples, centres, std)
    return {"recipe": recipe, "data": data, "seed": seed, "modes": coverage.modes, "total": coverage.total_modes,
            "hq": coverage.high_quality, "kl": coverage.reverse_kl, "wall": result.wall_s, "steps": checkpoint_step(checkpoint)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 steps, one seed, the grid only")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=None, help="CPU-minutes per run instead of --steps (equal CPU time)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["25gaussians", "8gaussians"], choices=["25gaussians", "8gaussians"])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time, one thread each")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seeds, args.datasets = 300, 1, ["25gaussians"]
    if args.minutes is not None and not 0 < args.minutes < 1e4:
        parser.error(f"--minutes {args.minutes}: give CPU-minutes per run above 0, e.g. --minutes 10")

    budget = f"{args.steps} generator steps" if args.minutes is None else f"{args.minutes:g} CPU-minutes"
    print(f"{budget}, seeds 0..{args.seeds - 1}, {SAMPLES} EMA samples per run, {args.jobs} runs at a time",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(run_one, recipe, data, args.steps, seed, Path(tmp), args.minutes)
                for data in args.datasets for recipe in args.recipes for seed in range(args.seeds)]
        results = [job.result() for job in jobs]
    print("| data | recipe | modes | high quality % | reverse KL | wall s per run | steps |")
    print("|---|---|---|---|---|---|---|")
    for data in args.datasets:
        for recipe in args.recipes:
            runs = [r for r in results if r["recipe"] == recipe and r["data"] == data]
            failed = [r for r in runs if "error" in r]
            if failed:
                print(f"| {data} | {recipe} | failed: {failed[0]['error']} | | | | |")
                continue
            modes = mean_spread([r["modes"] for r in runs], ".1f") + f" / {runs[0]['total']}"
            kls = [r["kl"] for r in runs]
            kl = mean_spread(kls, ".3f") if all(k != float("inf") for k in kls) else "inf"
            print(f"| {data} | {recipe} | {modes} | {mean_spread([100 * r['hq'] for r in runs], '.1f')} | {kl}"
                  f" | {mean_spread([r['wall'] for r in runs], '.0f')} | {mean_spread([r['steps'] for r in runs], '.0f')} |")
    print("\nrecipes: " + "; ".join(f"{name}: {script} {' '.join(flags)}".strip() for name, (script, flags) in RECIPES.items()))


if __name__ == "__main__":
    main()
