"""Test-only fault injection: inert unless $FACEGAN_FAILPOINTS names a failpoint.

    FACEGAN_FAILPOINTS="checkpoint_pause=2;nonfinite_loss=5:3"

`Failpoints.from_environment()` reads the variable where a run starts (train.run.loop.train) and
where a checkpoint is written (train.run.checkpoint), never at import, so a test may set it with
`monkeypatch.setenv` and run in-process. Unset, each site is one lookup in an empty mapping. The
failpoints and what they do are listed in the README's Reliability section.
"""
import dataclasses
import os
import re
import sys
import time
from typing import Mapping

VARIABLE = "FACEGAN_FAILPOINTS"
# Every failpoint there is, and the form of its value.
KNOWN = {
    "checkpoint_pause": "SECONDS[@STEP]",
    "checkpoint_enospc": "STEP[:COUNT]",
    "nonfinite_loss": "FIRST[:COUNT]",
    "nonfinite_grad": "FIRST[:COUNT]",
    "out_of_memory": "FIRST[:COUNT]",
    "step_pause": "SECONDS",
    "prepare_pause": "SECONDS[@STEP]",  # STEP: the shard after whose record `python -m train.data prepare` pauses
    "setup_pause": "SECONDS",  # read by launch/slurm/single_node.sbatch, before it starts node.sh
    "node_pause": "SECONDS",  # read by launch/slurm/node.sh, before it starts the training processes
}
_FORMS = {"SECONDS": r"\d+(\.\d*)?", "SECONDS[@STEP]": r"\d+(\.\d*)?(@\d+)?", "STEP[:COUNT]": r"\d+(:\d+)?", "FIRST[:COUNT]": r"\d+(:\d+)?"}


def _parse(text: str) -> dict[str, str]:
    points = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, _, value = item.partition("=")
        points[name.strip()] = value.strip()
    return points


def problem(text: str) -> str | None:
    """What is wrong with a $FACEGAN_FAILPOINTS value, or None."""
    for name, value in _parse(text).items():
        if name not in KNOWN:
            return f"{name!r} is no failpoint (there are {', '.join(KNOWN)})"
        if not re.fullmatch(_FORMS[KNOWN[name]], value):
            return f"{name}={value!r}: {name} takes {KNOWN[name]}"
    return None


@dataclasses.dataclass(frozen=True)
class Failpoints:
    """The failpoints set for this run: name -> value ("" for a bare name); empty, they do nothing."""

    values: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "Failpoints":
        return cls(_parse(text))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "Failpoints":
        return cls.parse(environ.get(VARIABLE, ""))

    def value(self, name: str) -> str | None:
        return self.values.get(name)

    def step_window(self, name: str) -> range:
        """A failpoint whose value is `FIRST:COUNT` (or `FIRST`), as the steps it covers; empty if unset."""
        value = self.value(name)
        if value is None:
            return range(0)
        first, _, count = value.partition(":")
        return range(int(first), int(first) + int(count or 1))

    def seconds(self, name: str) -> float:
        """A failpoint whose value is `SECONDS`; 0 if unset."""
        return float(self.value(name) or 0)

    def pause(self, name: str, where: str, step: int | None = None) -> None:
        """A failpoint whose value is `SECONDS` or `SECONDS@STEP`: sleep that long here (at `step` only,
        when the value names one), announcing it first on stderr so that a test can act in the window."""
        value = self.value(name)
        if value is None:
            return
        seconds, _, at = value.partition("@")
        if at and int(at) != step:
            return
        print(f"failpoint {name}: pausing {float(seconds):g} s {where}", file=sys.stderr, flush=True)
        time.sleep(float(seconds))
