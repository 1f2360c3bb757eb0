"""The signals that ask a run to stop (Slurm's SIGUSR1 before the time limit, SIGTERM on
preemption): the run's ranks handle them (train/run/stop.py), its data workers ignore them."""
import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
