"""Graceful stop: SIGUSR1, SIGTERM, SIGINT (Ctrl-C) or a wall-clock budget (--time-limit) asks the run to stop.

The request is agreed across ranks at each step boundary (a max all-reduce of every rank's flag),
so every rank leaves the loop after the same step, writes the same checkpoint and exits with the
resumable exit code. A signal only sets a flag: a second one while the checkpoint is written
changes nothing, and the checkpoint is still made atomically (train/run/checkpoint.py); only a second
Ctrl-C aborts, at once. A signal in the process's first seconds, before these handlers were in (caught
from the entry script's first line, train/common/stop_signals.py), ends the run before its set-up,
with nothing written; one during the set-up stops it after its first step.

Launchers need to signal the training processes themselves: `accelerate launch` and torchrun die
on SIGUSR1 and give their workers a fixed 30 s after a SIGTERM. When $FACEGAN_PID_DIR is set, each
rank writes its pid there once its handlers are in place (launch/slurm/node.sh reads them).
"""
import os
import re
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import torch
import torch.distributed as dist

from train.common.stop_signals import STOP_SIGNALS, abort, adopt_early_requests, handled

if TYPE_CHECKING:
    from accelerate import Accelerator

AFTER_END_GRACE_S = 5.0  # for writing exit_status.json and leaving, once the run has ended
PID_DIR_VARIABLE = "FACEGAN_PID_DIR"
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """Seconds in '11h30m', '45m', '90s', '1d2h', '5400' or '11:30:00'; ValueError otherwise.

    The first field may be any size ('90m', '36:00:00'); a field after it must be within its unit's
    range (minutes and seconds below 60, hours below 24 after days), so '1:99:99' is refused."""
    text = text.strip().lower()
    if text.isdigit():
        fields = [(int(text), 1, None)]
    elif re.fullmatch(r"\d+:\d{1,2}:\d{1,2}", text):
        hours, minutes, seconds = map(int, text.split(":"))
        fields = [(hours, 3600, None), (minutes, 60, 60), (seconds, 1, 60)]
    elif text and (match := _DURATION.match(text)):
        units = zip(match.groups(), (86400, 3600, 60, 1), (None, 24, 60, 60))
        fields = [(int(value), size, limit) for value, size, limit in units if value is not None]
    else:
        raise ValueError(f"{text!r} is not a duration")
    for position, (value, _, limit) in enumerate(fields):
        if position and value >= limit:
            raise ValueError(f"{value} is out of range for its unit (below {limit})")
    total = sum(value * size for value, size, _ in fields)
    if total <= 0:
        raise ValueError("it is no time at all")
    return total


class GracefulStop:
    """Collects stop requests on this rank; `agreed()` turns them into one decision for all ranks.

    Use as a context manager around the run. The handlers stay after it: a signal that comes
    once the run has ended (Slurm's SIGTERM at the time limit, a launcher passing one on) must not
    kill the process before it has reported how the run ended; but a process that has still not
    exited AFTER_END_GRACE_S later is ended, as the signal asked.
    """

    def __init__(self, accelerator: "Accelerator", time_limit_s: float | None, collective_timeout_s: float | None = None):
        self.accelerator = accelerator
        # Counted from the process's start, imports included: the budget is the session's.
        started = psutil.Process().create_time()
        self.deadline = None if time_limit_s is None else started + time_limit_s
        self.signal_name: str | None = None
        self.received: list[str] = []  # every stop signal, in order: a second SIGINT aborts
        self.early: list[str] = []  # those caught before these handlers were in
        self.ended = False
        self.exit_timers: list[threading.Timer] = []  # armed by signals after the run ended
        self._pid_file: Path | None = None
        # The flag travels through a CPU (gloo) group: an NCCL all-reduce read back with .item()
        # would make every training step wait for the GPU. Collective: every rank builds its own.
        # Bounded as the default group is (--collective-timeout; else gloo's own 30 minutes).
        self._group = None
        if accelerator.num_processes > 1 and dist.get_backend() != "gloo":
            timeout = None if collective_timeout_s is None else timedelta(seconds=collective_timeout_s)
            self._group = dist.new_group(backend="gloo", timeout=timeout)

    def __enter__(self) -> "GracefulStop":
        for sig in STOP_SIGNALS:
            if handled(sig):
                signal.signal(sig, self._on_signal)
        self.early = adopt_early_requests()
        self.received = self.early + self.received
        self.signal_name = self.received[0] if self.received else None
        pid_dir = os.environ.get(PID_DIR_VARIABLE)
        if pid_dir:  # written after the handlers: a pid listed there never dies of SIGUSR1
            self._pid_file = Path(pid_dir) / f"rank{self.accelerator.process_index}.pid"
            self._pid_file.parent.mkdir(parents=True, exist_ok=True)
            # Whole or absent, as a launcher reads it at any moment. Not atomic_write: its temporary
            # name keeps the .pid suffix that the launchers' rank*.pid reads.
            written = self._pid_file.with_name(f"{self._pid_file.name}.tmp")
            written.write_text(f"{os.getpid()}\n")
            os.replace(written, self._pid_file)
        return self

    def __exit__(self, *exc_info) -> None:
        self.ended = True
        if self._pid_file is not None:
            self._pid_file.unlink(missing_ok=True)

    def _on_signal(self, signum: int, frame) -> None:
        name, rank = signal.Signals(signum).name, self.accelerator.process_index
        if signum == signal.SIGINT and "SIGINT" in self.received:
            abort(rank)
        self.received.append(name)
        if self.ended:
            message = f"the run has already ended; the process ends within {AFTER_END_GRACE_S:.0f} s"
            timer = threading.Timer(AFTER_END_GRACE_S, os._exit, (128 + signum,))  # the shell's code for it
            timer.daemon = True
            timer.start()
            self.exit_timers.append(timer)
        elif self.signal_name is None:
            self.signal_name = name
            message = "stopping after this step with a checkpoint"
        else:
            message = "a stop is already under way"
        print(f"rank {rank}: {name} received; {message}", flush=True)

    def local_reason(self) -> str | None:
        if self.signal_name is not None:
            return self.signal_name
        if self.deadline is not None and time.time() >= self.deadline:
            return "--time-limit"
        return None

    def asked_before_set_up(self) -> str | None:
        """Collective, as the run's set-up begins: why it ends before its set-up (a stop signal
        caught on any rank before these handlers were in), or None."""
        if not self.any_rank(bool(self.early)):
            return None
        return self.early[0] if self.early else "a stop signal on another rank"

    def any_rank(self, flag: bool) -> bool:
        """Collective: whether `flag` is set on any rank (over the same CPU group as the stop flag)."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._group)
        return bool(value.item())

    def agreed(self) -> str | None:
        """Collective, once per step on every rank: why the run stops now, or None to go on.

        Any rank's request stops all of them. The reason is this rank's own when it has one,
        else the one the others agreed on ("SIGUSR1 on another rank" and the like).
        """
        local = self.local_reason()
        codes = {None: 0, "--time-limit": 1}
        code = codes.get(local, 2)
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([code])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
            code = int(flag.item())
        if code == 0:
            return None
        return local or ("--time-limit on another rank" if code == 1 else "a stop signal on another rank")
