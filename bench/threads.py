"""Wall time of debug runs alone and side by side, under each way of choosing their threads.

    python bench/threads.py [--modes alone pinned-pair pair] [--threads auto 1] [--max-steps 40]
                            [--env OMP_WAIT_POLICY=PASSIVE ...]

Each row is one `train/wgangp.py --debug` run alone, or two of them started together, with the
intra-op threads the trainer chooses itself (`auto`, train/run/threads.py) or `--threads N`:
- alone: one run on every CPU this process may use;
- pinned-pair: two runs, each given its half of those CPUs (as taskset, a cgroup cpuset or Slurm's
  --cpus-per-task would), so each chooses from its own affinity;
- pair: two runs on all of them, neither pinned: each starts as if alone, then computes on what the
  other leaves (train/run/threads.py's CoreShare); the line shows where its thread count went.
`--env` adds a row per setting, with that variable given to the runs (OpenMP reads its variables
as torch loads it). A pair's fair share is twice the time alone: each has half the machine. The figures are wall times
of whole processes (start-up and exit included), so they move with whatever else runs here.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("alone", "pinned-pair", "pair")


def start(out: Path, threads: str, max_steps: int, cpus: set[int] | None, extra: dict[str, str]) -> subprocess.Popen:
    flags = ["--debug", "--max-steps", str(max_steps), "--out", str(out)] + ([] if threads == "auto" else ["--threads", threads])
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # the trainer chooses
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train/wgangp.py"), *flags], cwd=ROOT, env={**env, **extra, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)),
    )


def timed(folder: Path, mode: str, threads: str, max_steps: int, extra: dict[str, str]) -> tuple[list[float], list[str]]:
    """Each run's wall seconds and its thread line, for one row."""
    cpus = sorted(os.sched_getaffinity(0))
    half = len(cpus) // 2 or 1
    pins = {"alone": [None], "pair": [None, None], "pinned-pair": [set(cpus[:half]), set(cpus[half:] or cpus[:half])]}[mode]
    began = time.perf_counter()
    name = "-".join([mode, threads, *(f"{k}={v}" for k, v in extra.items())])
    runs = [start(folder / f"{name}-{i}", threads, max_steps, pin, extra) for i, pin in enumerate(pins)]
    seconds, lines = [], []
    for run in runs:
        output, _ = run.communicate()
        if run.returncode:
            sys.exit(f"a run failed (exit code {run.returncode}):\n{output[-2000:]}")
        seconds.append(time.perf_counter() - began)
        found = re.search(r"^threads: .*$", output, re.M)
        later = re.findall(r"^threads: (\d+) intra-op threads? from here", output, re.M)  # train/run/threads.py's CoreShare
        lines.append((found.group(0) if found else "threads: (no line)") + (f"; then {' -> '.join(later)}" if later else ""))
    return seconds, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--threads", nargs="+", default=["auto", "1"], help="auto (the trainer's choice) or a count")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings, each timed in rows of its own")
    args = parser.parse_args()
    print(f"{len(os.sched_getaffinity(0))} CPUs; load average {os.getloadavg()[0]:.2f} before the first run")
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.modes:
            for threads in args.threads:
                for setting in ["", *args.env]:
                    extra = dict([setting.split("=", 1)]) if setting else {}
                    seconds, lines = timed(Path(folder), mode, threads, args.max_steps, extra)
                    walls = ", ".join(f"{s:.1f}" for s in seconds)
                    print(f"{mode:12s} threads={threads:5s} {setting:24s} wall s: {walls:12s} | {lines[0]}", flush=True)


if __name__ == "__main__":
    main()
