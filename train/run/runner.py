"""What every trainer's entry script does: parse and check the flags, train, exit with a code that
says how the run ended (and leave that in --out/exit_status.json for launchers).

The training loop, Accelerate and the data libraries are imported only once the flags are good,
so `--help` and a bad flag answer at once."""
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from train.data import DataError, DataSpecError
from train.run.config import Config, ConfigError, load_config
from train.run.multi_cpu import relaunch_on_cpu_processes
from train.run.outcome import BAD_INPUT, EXIT_STATUS_FILE, RunStatus, write_exit_status

if TYPE_CHECKING:
    from train.run.loop import ObjectiveFactory


def main(config_cls: type[Config], make_objective: "ObjectiveFactory", description: str, argv: Sequence[str] | None = None) -> int:
    relaunch_on_cpu_processes()
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        config = load_config(config_cls, argv, description)
        if main_process:  # a launcher reading it must never see the previous run's ending
            (Path(config.out) / EXIT_STATUS_FILE).unlink(missing_ok=True)
        from train.run.loop import train

        end = train(config, make_objective)
    except (ConfigError, DataSpecError, DataError) as error:
        if main_process:
            print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT
    if main_process:
        write_exit_status(Path(config.out), end)
        if end.status is RunStatus.STOPPED:
            print(f"exit code {end.status.exit_code}: stopped early and resumable; continue with --resume (or --resume auto)", flush=True)
    return end.status.exit_code
