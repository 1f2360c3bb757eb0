"""`accelerate launch --cpu --num_processes N` starts one process (Accelerate runs multi-CPU only
through mpirun). When a trainer finds itself started that way, it hands over to torchrun with N
CPU processes, which is what the command asked for; with --num_machines M, --machine_rank,
--main_process_ip and --main_process_port, this machine's N/M of them join the others'."""
import argparse
import os
import sys

import psutil

from train.common.stop_signals import before_exec


def requested_cpu_launch() -> argparse.Namespace | None:
    """The parent `accelerate launch --cpu` command's arguments when it asked for more than one
    process, else None."""
    if os.environ.get("WORLD_SIZE") or os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true"):
        return None
    try:
        argv = psutil.Process().parent().cmdline()
        launch_at = next(
            i
            for i, arg in enumerate(argv)
            if arg == "accelerate.commands.launch" or (arg == "launch" and i > 0 and "accelerate" in argv[i - 1])
        )
        from accelerate.commands.launch import launch_command_parser

        args, _ = launch_command_parser().parse_known_args(argv[launch_at + 1 :])
    except (StopIteration, psutil.Error, SystemExit, OSError):
        return None
    return args if args.cpu and (args.num_processes or 1) > 1 else None


def relaunch_on_cpu_processes() -> None:
    args = requested_cpu_launch()
    if args is None:
        return
    machines = args.num_machines or 1
    local = args.num_processes // machines
    if machines == 1:
        rendezvous = ["--standalone"]
    else:
        rendezvous = [
            f"--nnodes={machines}",
            f"--node_rank={args.machine_rank}",
            f"--master_addr={args.main_process_ip}",
            f"--master_port={args.main_process_port}",
        ]
    print(f"accelerate launch --cpu starts one process; running {local} CPU processes on this machine "
          f"({args.num_processes} on {machines}) with torchrun", flush=True)
    command = [sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc_per_node={local}", *sys.argv]
    os.execve(sys.executable, command, {**os.environ, "ACCELERATE_USE_CPU": "1", **before_exec()})
