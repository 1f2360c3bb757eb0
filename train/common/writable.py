"""An output file a tool cannot write, said in one line naming its flag: asked before any work
(an evaluation runs for an hour before it writes its one line of scores), and again should the
write itself fail (a disk that fills up meanwhile). Issue 23: a read-only place ended
generate.py in two chained OSError tracebacks."""
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


class Unwritable(ValueError):
    """An output that cannot be written; the message names the flag and the fix."""


def nearest_existing(path: Path) -> Path:
    """Where a first write at `path` lands: `path` itself, or the nearest folder above it that exists."""
    return next(p for p in (path, *path.absolute().parents) if p.exists())


def not_writable_reason(folder: Path) -> str | None:
    """Why no file can be made in `folder`, or None. os.access answers for a read-only mount even as
    root, whom permission bits do not stop."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
    return f"{folder} is on a read-only file system" if read_only else f"no permission to write in {folder}"


def check_writable(flag: str, path: Path) -> None:
    """Raise Unwritable when no file can be written at `path`, its missing folders made first."""
    path = Path(path)
    if path.is_dir():
        raise Unwritable(f"{flag} {path}: a folder; name a file in it")
    _check_place(flag, path, path.absolute().parent, f"choose another {flag}")


def check_new_folder(flag: str, folder: Path, fix: str = "choose a new or empty folder") -> None:
    """Raise Unwritable unless `folder` is new or empty and files can be made in it (its missing
    folders made first): a tool that fills a folder and owns it (an upload, a prepared dataset)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise Unwritable(f"{flag} {folder}: {'holds files already' if folder.is_dir() else 'a file'}; {fix}")
    _check_place(flag, folder, folder.absolute(), fix)


def _check_place(flag: str, path: Path, place: Path, fix: str) -> None:
    """Raise Unwritable, naming `flag` and `path`, when no file can be made at `place` (the nearest
    folder of it that exists must be a folder, and writable)."""
    existing = nearest_existing(place)
    if not existing.is_dir():
        raise Unwritable(f"{flag} {path}: {existing} is a file; {fix}")
    if reason := not_writable_reason(existing):
        raise Unwritable(f"{flag} {path}: not writable ({reason}); {fix}")


@contextlib.contextmanager
def written(flag: str, path: Path) -> Iterator[None]:
    """A block that writes `path`: its OSError (a full disk, a place gone read-only) as Unwritable."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or str(error)
        raise Unwritable(f"{flag} {path}: could not write it ({reason}); free space there or choose another {flag}") from None
