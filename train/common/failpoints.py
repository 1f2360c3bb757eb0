"""Test-only fault injection: inert unless $FACEGAN_FAILPOINTS names a failpoint.

    FACEGAN_FAILPOINTS="checkpoint_pause=2;nonfinite_loss=5:3"

`failpoint(name)` returns the named value (a string; "" for a bare name) or None. The variable is
read once, at import; with it unset each call is one lookup in an empty dict, so the sites may sit
on the hot path. The failpoints and what they do are listed in the README's Reliability section.
"""
import os
import re
import sys
import time

VARIABLE = "FACEGAN_FAILPOINTS"
# Every failpoint there is, and the form of its value.
KNOWN = {
    "checkpoint_pause": "SECONDS[@STEP]",
    "checkpoint_enospc": "STEP[:COUNT]",
    "nonfinite_loss": "FIRST[:COUNT]",
    "nonfinite_grad": "FIRST[:COUNT]",
    "step_pause": "SECONDS",
}
_FORMS = {"SECONDS": r"\d+(\.\d*)?", "SECONDS[@STEP]": r"\d+(\.\d*)?(@\d+)?", "STEP[:COUNT]": r"\d+(:\d+)?", "FIRST[:COUNT]": r"\d+(:\d+)?"}


def _parse(text: str) -> dict[str, str]:
    points = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, _, value = item.partition("=")
        points[name.strip()] = value.strip()
    return points


_ACTIVE = _parse(os.environ.get(VARIABLE, ""))


def problem(text: str) -> str | None:
    """What is wrong with a $FACEGAN_FAILPOINTS value, or None."""
    for name, value in _parse(text).items():
        if name not in KNOWN:
            return f"{name!r} is no failpoint (there are {', '.join(KNOWN)})"
        if not re.fullmatch(_FORMS[KNOWN[name]], value):
            return f"{name}={value!r}: {name} takes {KNOWN[name]}"
    return None


def failpoint(name: str) -> str | None:
    return _ACTIVE.get(name)


def step_window(name: str) -> range:
    """A failpoint whose value is `FIRST:COUNT` (or `FIRST`), as the steps it covers; empty if unset."""
    value = failpoint(name)
    if value is None:
        return range(0)
    first, _, count = value.partition(":")
    return range(int(first), int(first) + int(count or 1))


def pause(name: str, where: str, step: int | None = None) -> None:
    """A failpoint whose value is `SECONDS` or `SECONDS@STEP`: sleep that long here (at `step` only,
    when the value names one), announcing it first on stderr so that a test can act in the window."""
    value = failpoint(name)
    if value is None:
        return
    seconds, _, at = value.partition("@")
    if at and int(at) != step:
        return
    print(f"failpoint {name}: pausing {float(seconds):g} s {where}", file=sys.stderr, flush=True)
    time.sleep(float(seconds))
