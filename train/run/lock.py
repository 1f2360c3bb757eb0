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
import stat
import time
from pathlib import Path

LOCK_FILE = "run.lock"


# What a lock path that is not a regular file is, for the refusal (stat's file types).
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class RunLocked(ValueError):
    """--out cannot be locked for this run: another live run holds it (the message names the holder),
    or its lock path is no regular file; the message says what to do."""


class RunLock:
    """Taking the lock is the one change to --out before a start's checks are done: a start refused
    after it (`undo_if_alone`) puts run.lock back as it found it, and removes the folders it made."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self._fd: int | None = None
        self._found: bytes | None = None  # the lock file's content before this run wrote its own; None: made here
        self._made: list[Path] = []  # the folders acquire made, innermost first

    def acquire(self) -> "RunLock":
        self._refuse_odd_path()
        self._made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, self._found = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), None
        except FileExistsError:
            fd = os.open(self.path, os.O_RDWR)
            self._found = os.pread(fd, os.fstat(fd).st_size, 0)
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

    def _refuse_odd_path(self) -> None:
        """A folder or a FIFO where the lock file goes: open() would fail, or block, with a traceback."""
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise RunLocked(
                f"--out {self.path.parent}: {self.path} is {kind}, where the run keeps its lock file; move it away,"
                " or choose another --out"
            )

    def undo_if_alone(self) -> None:
        """After a start refused once the lock was taken: put run.lock back as it was (its content
        restored, or removed where this start made it) and remove the folders acquire made, when
        nothing else is in them: a failed start leaves --out as it found it. Done while still held:
        a file made here is unlinked, so whoever opens the name next gets a new one, and nobody can
        lock the old one in between."""
        if self._fd is None:
            return
        if self._found is None:
            self.path.unlink(missing_ok=True)
        else:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, self._found, 0)
        for folder in self._made:
            with contextlib.suppress(OSError):  # not empty: it holds more than this start made
                folder.rmdir()

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
