"""What an unrolled discriminator costs: one training step (one discriminator update, then the
generator's, unrolled k updates ahead) against k, exact and look-ahead, on the toy MLPs and on the
tutorial DCGAN.

    python bench/unrolled_cost.py [--ks 0 5 10 20] [--steps 5]

Each row times `--steps` steps of the trainer's own step (train.run.phases.Phases, the DCGAN recipe's
objective) after one warm-up step; ms per step is the median.
"""
import argparse
import statistics
import tempfile
import time

from bench.measure import synchronize
from bench.trainer_step import trainer_phases
from train.dcgan import DCGANConfig, make_objective
from train.run.config import resolve_config

SETUPS = {
    "toy MLP, batch 256": {"data": "toy:25gaussians"},
    "DCGAN 64 px (tutorial widths), batch 16": {"data": "synthetic", "batch_size": 16},
}


def ms_per_step(given: dict, steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        phases = trainer_phases(resolve_config(DCGANConfig, {**given, "out": out}), make_objective)
        phases.step()
        times = []
        for _ in range(steps):
            synchronize()
            start = time.perf_counter()
            phases.step()
            synchronize()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 5, 10, 20])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print("| networks | k | exact ms/step | look-ahead ms/step |")
    print("|---|---|---|---|")
    for name, given in SETUPS.items():
        for k in args.ks:
            if k == 0:
                plain = significant(ms_per_step(given, args.steps))
                print(f"| {name} | 0 (plain) | {plain} | {plain} |", flush=True)
                continue
            exact = ms_per_step({**given, "unrolled_steps": k, "unroll_mode": "exact"}, args.steps)
            ahead = ms_per_step({**given, "unrolled_steps": k, "unroll_mode": "lookahead"}, args.steps)
            print(f"| {name} | {k} | {significant(exact)} | {significant(ahead)} |", flush=True)


def significant(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}"


if __name__ == "__main__":
    main()
