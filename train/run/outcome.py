"""How a run ends, and the exit code that tells a launcher what to do next."""
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from train.common.atomic import atomic_write_text

BAD_INPUT = 2  # a flag, a variable or the data is wrong: rerunning the same command will not help
EXIT_STATUS_FILE = "exit_status.json"


class RunStatus(str, Enum):
    FINISHED = "finished"
    COLLAPSED = "collapsed"  # a collapse alarm with --stop-on-collapse
    STOPPED = "stopped"  # a signal or --time-limit: resumable
    DIVERGED = "diverged"  # non-finite values kept coming after --max-rollbacks rollbacks
    DATA_FAILED = "data_failed"  # the data could not be read mid-run: fix it, then resume

    @property
    def exit_code(self) -> int:
        # 75 is sysexits' EX_TEMPFAIL, "try again later": the launchers requeue or resume on it.
        return {"finished": 0, "data_failed": BAD_INPUT, "collapsed": 3, "diverged": 4, "stopped": 75}[self.value]


@dataclass
class RunEnd:
    status: RunStatus
    step: int
    reason: str | None = None


def write_exit_status(out: Path, end: RunEnd) -> None:
    """accelerate launch and torchrun turn a worker's exit code into 1, so launchers read this."""
    record = {"exit_code": end.status.exit_code, "status": end.status.value, "step": end.step, "reason": end.reason}
    atomic_write_text(Path(out) / EXIT_STATUS_FILE, json.dumps(record) + "\n")
