"""What every trainer's entry script does: parse and check the flags, take --out's lock, train, and
exit with a code that says how the run ended (also left in --out/exit_status.json for launchers).

The training loop, Accelerate and the data libraries are imported only once the flags are good,
so `--help` and a bad flag answer at once."""
import atexit
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Sequence

from train.data import DataError, DataSpecError
from train.run.checkpoint import (
    CheckpointMismatch,
    NoWholeCheckpoint,
    latest_checkpoint,
)
from train.run.config import Config, ConfigError, check_run_dir, load_config
from train.run.lock import RunLock, RunLocked
from train.run.multi_cpu import relaunch_on_cpu_processes
from train.run.outcome import BAD_INPUT, RunStatus, write_exit_status
from train.run.peers import RankLost

if TYPE_CHECKING:
    from train.run.build import ObjectiveFactory

# Once main has returned, the interpreter's shutdown gets this long before the process is ended
# with main's exit code: a thread or worker process that will not stop must not hold a Slurm
# allocation until its time limit.
EXIT_GRACE_S = 30.0


def main(config_cls: type[Config], make_objective: "ObjectiveFactory", description: str, argv: Sequence[str] | None = None) -> int:
    relaunch_on_cpu_processes()
    end_with_launcher()
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        config = load_config(config_cls, argv, description)
        out = Path(config.out)
        # The main process alone holds the lock, for the whole run (every node's ranks share it).
        with RunLock(out) if main_process else contextlib.nullcontext() as lock:
            try:
                check_run_dir(config)  # again: --out may have changed before the lock was ours
                from train.run.loop import train

                end = train(config, make_objective)
            except (ConfigError, DataSpecError, DataError, NoWholeCheckpoint, CheckpointMismatch):
                if lock is not None:
                    lock.undo_if_alone()
                raise
            except RankLost as lost:
                return ended_by_lost_rank(lost, out)
            if main_process:
                write_exit_status(out, end)
    except (ConfigError, DataSpecError, DataError, RunLocked, NoWholeCheckpoint, CheckpointMismatch) as error:
        if main_process:
            print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    if main_process and end.status is RunStatus.DATA_FAILED:
        print(f"error: {end.reason}", file=sys.stderr, flush=True)
    if main_process and end.status is RunStatus.STOPPED:
        print(f"exit code {end.status.exit_code}: {how_to_go_on(out)}", flush=True)
    return end.status.exit_code


def how_to_go_on(out: Path) -> str:
    """After a resumable stop: --resume is refused where the run stopped before its first checkpoint."""
    if latest_checkpoint(out) is None:
        return "stopped before the first checkpoint; start again with the same command (or --resume auto)"
    return "stopped early and resumable; continue with --resume (or --resume auto)"


def ended_by_lost_rank(lost: RankLost, out: Path) -> int:
    """On each rank left after one stopped answering: one of them says so in one line and writes
    exit_status.json (resumable), each ends the lost ranks on its host; the exit code."""
    end = lost.end(out)
    if lost.reports:  # on a line of its own: the lost rank may have left its progress bar mid-line
        print(f"\nerror: {end.reason}", file=sys.stderr, flush=True)
        write_exit_status(out, end)
    lost.end_lost_ranks_here()
    return end.status.exit_code


def end_with_launcher(poll_s: float = 5.0) -> None:
    """A rank that torchrun started (in a session of its own) ends when its launcher is gone:
    killed launchers would otherwise leave ranks waiting in a collective for gloo's 30 minutes,
    holding --out's lock. Watched by a daemon thread: the parent pid changes when the parent dies."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_s)
        print(f"rank {os.environ.get('RANK', '?')}: the launcher (pid {launcher}) is gone; ending", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def exit_promptly(code: int, grace_s: float = EXIT_GRACE_S) -> NoReturn:
    """End the process with `code` as Python's own exit would for the program (its threads joined, the
    atexit functions run: W&B's, multiprocessing's, logging's; stdout and stderr flushed), without the
    interpreter's teardown of every module, which took about a second of each trainer's life with
    torch loaded and frees nothing the OS does not. Should any of it hang, the process ends with
    `code` anyway after grace_s."""

    def force() -> None:
        print(f"exit: shutdown still not done after {grace_s:.0f} s; ending the process", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)

    timer = threading.Timer(grace_s, force)
    timer.daemon = True
    timer.start()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what Py_Finalize runs after the threads, before the teardown os._exit skips
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_trainer(config_cls: type[Config], make_objective: "ObjectiveFactory", description: str) -> NoReturn:
    """A recipe's `__main__`: main, then a bounded exit with its code."""
    exit_promptly(main(config_cls, make_objective, description))
