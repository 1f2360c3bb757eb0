"""What every trainer's entry script does: parse and check the flags, then train."""
import os
import sys
from typing import Sequence

from train.config import Config, ConfigError, load_config
from train.data import DataError, DataSpecError
from train.loop import ObjectiveFactory, train
from train.multi_cpu import relaunch_on_cpu_processes

# Exit codes: 0 finished, 2 bad input (nothing computed), 3 stopped by --stop-on-collapse.
EXIT_CODES = {"finished": 0, "collapsed": 3}


def main(config_cls: type[Config], make_objective: ObjectiveFactory, description: str, argv: Sequence[str] | None = None) -> int:
    relaunch_on_cpu_processes()
    try:
        status = train(load_config(config_cls, argv, description), make_objective)
    except (ConfigError, DataSpecError, DataError) as error:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {error}", file=sys.stderr)
        return 2
    return EXIT_CODES[status]
