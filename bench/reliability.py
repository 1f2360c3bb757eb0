"""The README's Reliability figures: SIGKILL of a 1-process and a 2-process run at 10 seeded-random
moments each, and a 2-process SIGUSR1/SIGTERM storm at 10 moments, each run resumed with
`--resume auto` until it finishes and judged against an uninterrupted run (tests/faults.py).

    python bench/reliability.py [--moments 10] [--pause 0.4]

Prints one Markdown row per fault: trials | runs that finished | steps lost beyond the last
checkpoint | checkpoints that failed to load | bit-identical to the uninterrupted run.
About 10 minutes on a 2-core CPU.
"""
import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.faults import Figures, killed_and_resumed, moments, run_to_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moments", type=int, default=10, help="kills or signals per run")
    parser.add_argument("--pause", type=float, default=0.4, help="seconds each checkpoint write pauses (failpoint)")
    args = parser.parse_args()
    env = {"FACEGAN_FAILPOINTS": f"checkpoint_pause={args.pause}"}
    print("| fault | trials | runs that finished | steps lost beyond the last checkpoint |"
          " checkpoints that failed to load | bit-identical to the uninterrupted run |")
    print("|---|---|---|---|---|---|")
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        references = {}
        for processes in (1, 2):
            code, output, seconds = run_to_end(root / f"reference{processes}", processes)
            assert code == 0, output[-3000:]
            references[processes] = (root / f"reference{processes}", seconds)
        cases = [
            ("SIGKILL, 1 process", 1, None),
            ("SIGKILL, 2 processes", 2, None),
            ("SIGUSR1/SIGTERM storm, 2 processes", 2, [signal.SIGUSR1, signal.SIGTERM] * (args.moments // 2)),
        ]
        for seed, (name, processes, signals) in enumerate(cases):
            reference, seconds = references[processes]
            figures = Figures(name)
            killed_and_resumed(figures, reference, root / f"run{seed}", processes, moments(100 + seed, args.moments, seconds),
                               env, signals, timeout=1800)
            print(figures.row(), flush=True)
            for note in figures.notes:
                print(f"  note: {note[-500:]}", file=sys.stderr)
    print(f"\n{time.monotonic() - began:.0f} s in all")


if __name__ == "__main__":
    main()
