"""Optimizer-state bytes per rank under DDP, ZeRO-1 and ZeRO-2 (issue 15): the FastGAN pair at the
lightweight trainer's defaults, one real step on 2 CPU processes, then the bytes of the tensors each
rank holds, counted by storage (a view is counted once). Prints a Markdown table.

    python bench/zero_memory.py                 # 1024 px, 2 processes (torchrun is started for you)
    python bench/zero_memory.py --resolution 256

Adam state is exp_avg + exp_avg_sq (+ step). ZeRO also keeps an fp32 master copy of its
partition of the weights (a clone even when the weights are fp32), counted apart. Not counted:
the weights themselves and the activations, the same on every path.
"""
import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = ("DDP", "ZeRO-1", "ZeRO-2")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=1024, help="image size of the pair (the issue's: 1024)")
    parser.add_argument("--processes", type=int, default=2, help="CPU processes (gloo)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per process in the measured step")
    return parser.parse_args(argv)


def storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        if torch.is_tensor(tensor) and tensor.numel():
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def adam_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]


def build_pair(resolution: int):
    from models import build_models
    from train.lightweight_gan import LightweightGANConfig

    defaults = {field.name: field.default for field in dataclasses.fields(LightweightGANConfig)}
    torch.manual_seed(0)
    return build_models(
        "lightweight", resolution=resolution, latent_dim=defaults["latent_dim"], channel_base=defaults["channel_base"],
        channel_max=defaults["channel_max"], critic_norm=defaults["critic_norm"], attn_resolutions=defaults["attn_resolutions"],
    ), defaults


def one_step(mode: str, args: argparse.Namespace) -> dict[str, int]:
    """One FastGAN step (critic, then generator) under `mode`; this rank's bytes afterwards."""
    from train.gan.objectives import FastGANHinge

    (generator, critic), defaults = build_pair(args.resolution)
    parameters = sum(p.numel() for p in (*generator.parameters(), *critic.parameters()))
    lr, betas = defaults["lr"], defaults["betas"]
    g_opt, d_opt = torch.optim.Adam(generator.parameters(), lr, betas), torch.optim.Adam(critic.parameters(), lr, betas)
    objective = FastGANHinge(rng=torch.Generator().manual_seed(1))
    real = torch.rand(args.batch_size, 3, args.resolution, args.resolution) * 2 - 1
    z = torch.randn(args.batch_size, defaults["latent_dim"])
    if mode == "DDP":
        from torch.nn.parallel import DistributedDataParallel

        generator, critic = DistributedDataParallel(generator), DistributedDataParallel(critic)
        loss, _ = objective.critic_loss(critic, real, generator(z).detach())
        loss.backward()
        d_opt.step()
        d_opt.zero_grad(set_to_none=True)
        critic.requires_grad_(False)
        objective.generator_loss(critic, generator(z))[0].backward()
        g_opt.step()
        g_opt.zero_grad(set_to_none=True)
        return {"parameters": parameters, "adam": storage_bytes(adam_state(g_opt) + adam_state(d_opt)), "master": 0}

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from train.run import zero

    options = zero.ZeroOptions(stage=int(mode[-1]), micro_batch=args.batch_size)
    accelerator = Accelerator(**zero.accelerator_options(options, use_cpu=True))
    generator, critic, g_opt, d_opt = zero.prepare_pair(accelerator, generator, critic, g_opt, d_opt)
    updates = zero.ZeroUpdates(grad_accum=1)
    run_generator, run_critic = updates.network(generator), updates.network(critic)
    with torch.no_grad():
        fake = run_generator(z)
    updates.backward(critic, objective.critic_loss(run_critic, real, fake)[0], micro=0)
    updates.update(d_opt, critic)
    critic.requires_grad_(False)
    updates.backward(generator, objective.generator_loss(run_critic, run_generator(z))[0], micro=0)
    updates.update(g_opt, generator)
    engines = (generator.optimizer, critic.optimizer)  # DeepSpeedZeroOptimizer: the inner Adam and the fp32 partitions
    result = {
        "parameters": parameters,
        "adam": storage_bytes([t for engine in engines for t in adam_state(engine.optimizer)]),
        "master": storage_bytes([t for engine in engines for t in engine.single_partition_of_fp32_groups]),
    }
    del generator, critic, g_opt, d_opt, engines
    accelerator.free_memory()
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return result


def measure(args: argparse.Namespace) -> None:
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = {}
    for mode in MODES:
        mine = one_step(mode, args)
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        rows[mode] = everyone
    if rank == 0:
        print(table(rows, args, world))


def table(rows: dict[str, list[dict[str, int]]], args: argparse.Namespace, world: int) -> str:
    mib = lambda n: f"{n / 2**20:.1f}"  # noqa: E731
    parameters = rows["DDP"][0]["parameters"]
    lines = [
        f"FastGAN pair at {args.resolution} px ({parameters / 1e6:.1f} M parameters), {world} processes;"
        f" MiB per rank, rank 0 / rank 1 ... (measured from the tensors each rank holds after one step)",
        "",
        "| path | Adam state | fp32 master weights | total | vs DDP |",
        "|---|---|---|---|---|",
    ]
    ddp_total = max(r["adam"] + r["master"] for r in rows["DDP"])
    for mode, ranks in rows.items():
        totals = [r["adam"] + r["master"] for r in ranks]
        lines.append(
            f"| {mode} | {' / '.join(mib(r['adam']) for r in ranks)} | {' / '.join(mib(r['master']) for r in ranks)}"
            f" | {' / '.join(mib(t) for t in totals)} | {max(totals) / ddp_total:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if "WORLD_SIZE" not in os.environ:  # started by hand: hand over to torchrun with N gloo processes
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.processes}",
                   __file__, *(argv if argv is not None else sys.argv[1:])]
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        env.pop("ACCELERATE_USE_CPU", None)  # it would make Accelerate drop DeepSpeed (train/run/zero.py)
        sys.exit(subprocess.run(command, cwd=ROOT, env=env).returncode)
    measure(args)


if __name__ == "__main__":
    main()
