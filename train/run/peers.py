"""A rank that stops answering (frozen by SIGSTOP, a wedged GPU or a stuck filesystem, or dead
mid-collective) ends the run within --collective-timeout, resumably.

Every collective is bounded by --collective-timeout: gloo's timeout on CPUs; on GPUs NCCL's
watchdog, told to abort the communicators and leave the process alive, so that the error reaches
Python as it does under gloo. When a collective fails for want of a rank, the ranks left take a roll
call in the launcher's store (torchrun's agent holds it, so it outlives any rank): a rank that does
not answer is the one that stopped answering, named by the host and pid it registered there at
start-up. The lowest rank that answered writes the one `error:` line and exit_status.json (status
"stopped", exit code 75: the launchers requeue or resume on it), so the end is reported even when
rank 0 is the one lost. A lost rank on the same host as a rank left is ended with SIGKILL, the one
signal a stopped process obeys: it would otherwise keep --out's lock and the allocation (torchrun
sends SIGTERM, which waits for a SIGCONT, and only SIGKILL 30 s later). Lost ranks on other hosts
are their launcher's to end (launch/slurm/multi_node.sbatch: srun --kill-on-bad-exit).
"""
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import torch.distributed as dist

from train.run.checkpoint import checkpoint_step, latest_checkpoint
from train.run.outcome import RunEnd, RunStatus

if TYPE_CHECKING:
    from accelerate import Accelerator

# How long the ranks left wait for each other's answers while more than one has not answered: they
# time out in the same collective, within a step of each other. Once every rank but one has
# answered, that one is the lost rank: of two ranks, the one left never waits.
ROLL_CALL_S = 5.0
# What the end takes beyond --collective-timeout: the roll call, the status, the process's exit and
# the launcher's reaction (measured: bench/reliability.py's SIGSTOP trial).
END_MARGIN_S = ROLL_CALL_S + 10.0
_KEY = "facegan/peers"


def nccl_errors_to_python() -> None:
    """NCCL's watchdog, at --collective-timeout, aborts the communicators without ending the process
    (2: CleanUpOnly), so the next collective raises in Python. torchrun sets 1 (TearDown: the
    process killed by SIGABRT, before it can say which rank stopped) where nothing is set; 0 or 3
    set by the user stay."""
    if os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1") == "1":
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "2"


def lost_touch(error: BaseException) -> bool:
    """Whether `error` is a collective that failed for want of another rank: gloo's timeouts and
    closed connections (plain RuntimeErrors, whose text names gloo's transport source file), NCCL's
    timeouts and aborted communicators and an unreachable store (torch.distributed's DistError)."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "gloo" in str(error))


@dataclass(frozen=True)
class Peer:
    rank: int
    host: str
    pid: int
    started: float  # the process's creation time: a pid reused since is not this rank

    def __str__(self) -> str:
        return f"rank {self.rank} (pid {self.pid} on {self.host})"

    def end_if_here(self) -> None:
        """SIGKILL this rank's process when it runs on this host and is still the same process."""
        if self.host != socket.gethostname():
            return
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(self.pid)
            if process.create_time() == self.started:
                process.send_signal(signal.SIGKILL)


def end_here(lost: Sequence[Peer]) -> None:
    """SIGKILL the lost ranks that run on this host. torchrun answers their end with SIGTERM to the
    ranks left, which have ended their run and are reporting it: that must not change how this one
    ends (a Python handler would not run once the interpreter's shutdown has reset them)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for peer in lost:
        peer.end_if_here()


class RankLost(Exception):
    """Raised on every rank left when a rank stopped answering; `reports` on the one that says so."""

    def __init__(self, lost: tuple[Peer, ...], reports: bool, cause: str):
        self.lost, self.reports, self.cause = lost, reports, cause
        super().__init__(f"{', '.join(map(str, lost)) or 'a rank'} stopped answering ({cause})")

    def end(self, out: Path) -> RunEnd:
        """The run's end, resumable from the newest checkpoint (renamed into place only once whole)."""
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            return RunEnd(RunStatus.STOPPED, 0,
                          f"{self}; no checkpoint yet: start again with the same command (or --resume auto)")
        step = checkpoint_step(checkpoint)
        return RunEnd(RunStatus.STOPPED, step, f"{self}; the last whole checkpoint is {checkpoint} (step {step}):"
                      " continue with --resume (or --resume auto)")

    def end_lost_ranks_here(self) -> None:
        end_here(self.lost)


class Peers:
    """The run's ranks as the launcher's store knows them; `watching()` turns a collective that
    failed for want of a rank into RankLost."""

    def __init__(self, store: "dist.Store | None", rank: int, world: int, timeout_s: float):
        self.store, self.rank, self.world, self.timeout_s = store, rank, world, timeout_s

    @classmethod
    def join(cls, accelerator: "Accelerator", timeout_s: float) -> "Peers":
        """This rank's host and pid, registered for the others (none to register on one process)."""
        if accelerator.num_processes == 1:
            return cls(None, 0, 1, timeout_s)
        # torch.distributed offers no public handle on the store its default group was made with.
        store = dist.distributed_c10d._get_default_store()
        me = Peer(accelerator.process_index, socket.gethostname(), os.getpid(), psutil.Process().create_time())
        store.set(f"{_KEY}/peer/{me.rank}", json.dumps(dataclasses.asdict(me)))
        return cls(store, me.rank, accelerator.num_processes, timeout_s)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            if self.store is None:
                raise
            if not lost_touch(error):  # this rank's own error: the others must not blame a lost rank
                with contextlib.suppress(Exception):
                    self.store.set(f"{_KEY}/failed/{self.rank}", "1")
                raise
            lost = self.roll_call(error)
            if lost is None:
                raise
            raise lost from error

    def leave_together(self) -> None:
        """Each rank marks the end of its run and waits (--collective-timeout at most) for the others':
        a rank that froze after its last collective would otherwise keep the launcher waiting for
        ever. Ranks whose mark never comes are named, by the first rank that marked its end, and
        ended where they run on this host; the run's own end stands."""
        if self.store is None:
            return
        done = [f"{_KEY}/done/{rank}" for rank in range(self.world)]
        self.store.set(done[self.rank], "1")
        try:
            self.store.wait(done, timedelta(seconds=self.timeout_s))
            return
        except (RuntimeError, dist.DistError):  # the store's own timeout: a rank never came
            pass
        try:
            marked = {rank for rank in range(self.world) if self.store.check([done[rank]])}
            lost = [self._peer(rank) for rank in range(self.world) if rank not in marked]
        except (RuntimeError, dist.DistError, ValueError):  # the store has gone with the launcher
            return
        if self.rank == min(marked):
            print(f"warning: {', '.join(map(str, lost))} stopped answering as the run ended (waited"
                  f" --collective-timeout {self.timeout_s:g} s); ending it", file=sys.stderr, flush=True)
        end_here(lost)

    def roll_call(self, error: BaseException) -> RankLost | None:
        """The ranks that do not answer, as RankLost; None when none is missing, or when a rank ended
        by an error of its own (which it reports)."""
        cause = (f"a collective timed out after --collective-timeout {self.timeout_s:g} s; raise it if that rank was"
                 " only busy" if "timed out" in str(error).lower() else "its connection closed: the process ended")
        try:
            self.store.set_timeout(timedelta(seconds=ROLL_CALL_S))
            self.store.set(f"{_KEY}/answered/{self.rank}", "1")
            answered, failed = self._answers()
            if failed or len(answered) == self.world:
                return None
            lost = tuple(self._peer(rank) for rank in range(self.world) if rank not in answered)
        except (RuntimeError, dist.DistError, ValueError):  # the store is gone too: which rank is unknown
            return RankLost((), True, f"{cause}; the launcher's store did not answer either")
        return RankLost(lost, self.rank == min(answered), cause)

    def _answers(self) -> tuple[set[int], set[int]]:
        """(answered, failed) once every rank but one is accounted for, or after ROLL_CALL_S."""
        deadline = time.monotonic() + ROLL_CALL_S
        while True:
            answered, failed = self._ranks_with("answered"), self._ranks_with("failed")
            if failed or self.world - len(answered) <= 1 or time.monotonic() > deadline:
                return answered, failed
            time.sleep(0.1)

    def _ranks_with(self, key: str) -> set[int]:
        return {rank for rank in range(self.world) if self.store.check([f"{_KEY}/{key}/{rank}"])}

    def _peer(self, rank: int) -> Peer:
        return Peer(**json.loads(self.store.get(f"{_KEY}/peer/{rank}")))
