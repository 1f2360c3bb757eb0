"""`accelerate launch --cpu --num_processes N` starts one process (Accelerate runs multi-CPU only
through mpirun). When a trainer finds itself started that way, it hands over to torchrun with N
CPU processes, which is what the command asked for."""
import os
import sys

import psutil


def requested_cpu_processes() -> int:
    """N from the parent `accelerate launch --cpu --num_processes N`, else 1."""
    if os.environ.get("WORLD_SIZE") or os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true"):
        return 1
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
        return 1
    return args.num_processes or 1 if args.cpu else 1


def relaunch_on_cpu_processes() -> None:
    processes = requested_cpu_processes()
    if processes <= 1:
        return
    print(f"accelerate launch --cpu starts one process; running {processes} CPU processes with torchrun", flush=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *sys.argv]
    os.execve(sys.executable, command, {**os.environ, "ACCELERATE_USE_CPU": "1"})
