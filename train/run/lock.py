"""One run per --out at a time: an exclusive lock on the run directory for the life of the run.

A POSIX record lock (fcntl.lockf) on `--out/run.lock`, taken by the main process before anything
else is written there. The kernel drops it when the process ends, however it ends (SIGKILL, the
OOM killer, a node's power), so a stale lock cannot outlive its holder; forked DataLoader workers
do not inherit it. The file holds the holder's host, pid and start time for the refusal message.
On NFS (v3 with lockd, v4) the lock holds across nodes; on Lustre only with the `flock` or
`localflock` mount option (`localflock`: per node only); GPFS honours it across nodes.
"""
import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "run.lock"


class RunLocked(ValueError):
    """--out is another live run's; the message names the holder and what to do."""


class RunLock:
    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise RunLocked(
                f"--out {self.path.parent} is in use by another run ({holder}); wait for it to end or stop it,"
                " or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}).encode(), 0)
        self._fd = fd
        return self

    def undo_if_alone(self) -> None:
        """After a start that failed: remove the lock file, and --out too when nothing else is in it,
        so a failed start leaves no trace. Unlinked while still held: whoever opens the name next
        gets a new file, and nobody can lock the old one in between."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: the folder was there before, or holds more
            self.path.parent.rmdir()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with the descriptor; the file stays, unlocked
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    @staticmethod
    def _describe(content: bytes) -> str:
        try:
            holder = json.loads(content)
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
            return f"pid {holder['pid']} on {holder['host']}, started {started}"
        except (ValueError, KeyError, TypeError):
            return "a process that is starting"
