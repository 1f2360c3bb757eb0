"""The signals that ask a run to stop (Slurm's SIGUSR1 before the time limit, SIGTERM on
preemption, SIGINT from Ctrl-C): the run's ranks handle them (train/run/stop.py), its data workers
ignore them.

A trainer's entry script catches them from its first line (`catch_stop_signals`), before the
seconds of imports and set-up that come before the run's own handlers: a request that comes then is
kept here, and GracefulStop adopts it (`adopt_early_requests`): the run then ends before its
set-up, with nothing written and the resumable exit, instead of the process being killed. Imports
nothing heavy.

Ctrl-C is a stop request like the others; a second Ctrl-C aborts at once (`abort`), without a
checkpoint: the last whole one stays, since checkpoints are made atomically.
"""
import os
import signal
import sys
from typing import NoReturn

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
ABORTED = 128 + signal.SIGINT  # the shell's exit code for a process ended by Ctrl-C

REQUESTS_VARIABLE = "FACEGAN_STOP_REQUESTS"  # requests caught before an exec, for the processes after it
_early_requests: list[str] = []  # the stop signals caught before GracefulStop took over, in order
_inherited: dict[signal.Signals, object] = {}  # the dispositions the process started with


def handled(sig: signal.Signals) -> bool:
    """Whether this process takes `sig` as a stop request. A SIGINT ignored from the start stays
    ignored, as Python itself leaves it: a shell script's background job is not the terminal's."""
    return not (sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN)


def catch_stop_signals() -> None:
    """An entry script's first call, before its slow imports: keep stop requests for the run."""
    for sig in STOP_SIGNALS:
        if handled(sig):
            _inherited[sig] = signal.signal(sig, _on_early_signal)
    if requests := os.environ.pop(REQUESTS_VARIABLE, ""):
        _early_requests.extend(requests.split(","))


def _on_early_signal(signum: int, frame) -> None:
    name, rank = signal.Signals(signum).name, os.environ.get("RANK", "0")
    if signum == signal.SIGINT and "SIGINT" in _early_requests:
        abort(rank)
    message = "a stop is already under way" if _early_requests else "the run ends before its set-up"
    _early_requests.append(name)
    print(f"rank {rank}: {name} received while starting; {message}", flush=True)


def adopt_early_requests() -> list[str]:
    """The stop signals caught since `catch_stop_signals`, handed over once."""
    requests = list(_early_requests)
    _early_requests.clear()
    return requests


def before_exec() -> dict[str, str]:
    """For a process about to replace itself (train/run/multi_cpu.py hands over to torchrun): the
    dispositions it started with, back (a launcher's ignored SIGUSR1 must reach torchrun, whose ranks
    catch the signals again), and the environment that passes the requests caught so far on to them."""
    for sig, disposition in _inherited.items():
        signal.signal(sig, disposition)
    return {REQUESTS_VARIABLE: ",".join(_early_requests)} if _early_requests else {}


def abort(rank: int | str) -> NoReturn:
    """A second Ctrl-C: the person at the terminal wants the process gone now, not after a checkpoint.
    Written unbuffered: a print could find stderr's buffer in use by the code the signal interrupted."""
    message = f"rank {rank}: SIGINT again: aborting now, without a checkpoint (the last whole one stays)\n"
    os.write(sys.stderr.fileno(), message.encode())
    os._exit(ABORTED)
