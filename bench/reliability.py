"""The README's Reliability figures: SIGKILL of a 1-process and a 2-process run at 10 seeded-random
moments each, a 2-process SIGUSR1/SIGTERM storm at 10 moments, and SIGSTOP of one rank of a
2-process run (rank 0 and rank 1 in turn) at 10 moments, each run resumed with `--resume auto`
until it finishes and judged against an uninterrupted run (tests/faults.py). A stopped rank must
end the run by itself: the time from each SIGSTOP until the launcher and every rank had ended is
measured, with --collective-timeout 10s.

    python bench/reliability.py [--moments 10] [--pause 0.4] [--faults sigkill1 sigkill2 storm sigstop]

Prints one Markdown row per fault: trials | runs that finished | steps lost beyond the last
checkpoint | checkpoints that failed to load | bit-identical to the uninterrupted run; then the
SIGSTOP trial's times. About 15 minutes on a 2-core CPU.
"""
import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The harness lives in the tests (tests/faults.py): `python bench/reliability.py` puts bench/ on the
# path, not the checkout's root, and the tests are no installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults import RUN_FLAGS, Figures, killed_and_resumed, moments, run_to_end

STOP_TIMEOUT = "10s"  # --collective-timeout of the SIGSTOP trial's runs

# name, processes, the signals in turn (None: SIGKILL of every process), the runs' flags, and the
# share of the uninterrupted run's time the moments are drawn from: a stopped run starts again and
# reaches a moment late in its span only after the run has finished, so the stops come earlier.
FAULTS = {
    "sigkill1": ("SIGKILL, 1 process", 1, None, RUN_FLAGS, 1.0),
    "sigkill2": ("SIGKILL, 2 processes", 2, None, RUN_FLAGS, 1.0),
    "storm": ("SIGUSR1/SIGTERM storm, 2 processes", 2, [signal.SIGUSR1, signal.SIGTERM], RUN_FLAGS, 1.0),
    "sigstop": ("SIGSTOP of one rank, 2 processes", 2, [signal.SIGSTOP], [*RUN_FLAGS, "--collective-timeout", STOP_TIMEOUT], 0.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moments", type=int, default=10, help="kills or signals per run")
    parser.add_argument("--pause", type=float, default=0.4, help="seconds each checkpoint write pauses (failpoint)")
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=list(FAULTS), help="the faults to try")
    args = parser.parse_args()
    env = {"FACEGAN_FAILPOINTS": f"checkpoint_pause={args.pause}"}
    print("| fault | trials | runs that finished | steps lost beyond the last checkpoint |"
          " checkpoints that failed to load | bit-identical to the uninterrupted run |")
    print("|---|---|---|---|---|---|")
    began, stop_times = time.monotonic(), []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        references = {}
        for processes in sorted({FAULTS[fault][1] for fault in args.faults}):
            code, output, seconds = run_to_end(root / f"reference{processes}", processes, through_accelerate=True)
            assert code == 0, output[-3000:]
            references[processes] = (root / f"reference{processes}", seconds)
        for fault in args.faults:
            name, processes, signals, flags, span = FAULTS[fault]
            reference, seconds = references[processes]
            figures = Figures(name)
            seed = list(FAULTS).index(fault)
            killed_and_resumed(figures, reference, root / f"run{seed}", processes, moments(100 + seed, args.moments, seconds * span),
                               env, signals and signals * (args.moments // len(signals)), timeout=1800, flags=flags,
                               through_accelerate=True)  # as the README's figures were made
            print(figures.row(), flush=True)
            stop_times += figures.end_seconds
            for note in figures.notes:  # its head says what was judged, its tail how the run ended
                print(f"  note: {note[:300]} ... {note[-1500:]}", file=sys.stderr)
    if stop_times:
        print(f"\nSIGSTOP of one rank, --collective-timeout {STOP_TIMEOUT}: every process ended {min(stop_times):.1f} s to"
              f" {max(stop_times):.1f} s after the stop (median {statistics.median(stop_times):.1f} s, {len(stop_times)} stops)")
    print(f"\n{time.monotonic() - began:.0f} s in all")


if __name__ == "__main__":
    main()
