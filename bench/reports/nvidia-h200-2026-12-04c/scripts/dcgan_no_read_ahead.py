"""train/dcgan.py as before read-ahead (the A/B of bench/data_wait.py --trainer): the loop opens its
stream with read_ahead=0 on the GPU too."""
import functools
import runpy
import sys

import train.run.loop as loop

loop.open_stream = functools.partial(loop.open_stream, read_ahead=0)
sys.argv[0] = "train/dcgan.py"
runpy.run_path("train/dcgan.py", run_name="__main__")
