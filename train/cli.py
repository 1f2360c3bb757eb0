"""What every trainer's entry script does: parse and check the flags, train, exit with a code that
says how the run ended (and leave that in --out/exit_status.json for launchers)."""
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from train.config import Config, ConfigError, load_config
from train.data import DataError, DataSpecError
from train.loop import ObjectiveFactory, RunEnd, train
from train.multi_cpu import relaunch_on_cpu_processes

BAD_INPUT = 2
# 75 is sysexits' EX_TEMPFAIL, "try again later": the launchers requeue or resume on it.
EXIT_CODES = {"finished": 0, "collapsed": 3, "stopped": 75}
EXIT_STATUS_FILE = "exit_status.json"


def main(config_cls: type[Config], make_objective: ObjectiveFactory, description: str, argv: Sequence[str] | None = None) -> int:
    relaunch_on_cpu_processes()
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        config = load_config(config_cls, argv, description)
        if main_process:  # a launcher reading it must never see the previous run's ending
            (Path(config.out) / EXIT_STATUS_FILE).unlink(missing_ok=True)
        end = train(config, make_objective)
    except (ConfigError, DataSpecError, DataError) as error:
        if main_process:
            print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    code = EXIT_CODES[end.status]
    if main_process:
        write_exit_status(Path(config.out), end, code)
        if end.status == "stopped":
            print(f"exit code {code}: stopped early and resumable; continue with --resume (or --resume auto)", flush=True)
    return code


def write_exit_status(out: Path, end: RunEnd, code: int) -> None:
    """accelerate launch and torchrun turn a worker's exit code into 1, so launchers read this."""
    tmp = out / (EXIT_STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps({"exit_code": code, "status": end.status, "step": end.step, "reason": end.reason}) + "\n")
    os.replace(tmp, out / EXIT_STATUS_FILE)
