"""Every file the toolkit writes over appears whole or not at all: written beside its final name,
then renamed over it (a rename within one folder is atomic on POSIX filesystems)."""
import os
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def atomic_write(path: Path, write: Callable[[Path], T]) -> T:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it over `path`; returns what `write` returned. The temporary
    name keeps the suffix (Pillow and matplotlib pick the format from it) and the pid (two writers
    never share one); it is removed if `write` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        written = write(tmp)
        os.replace(tmp, path)
        return written
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))
