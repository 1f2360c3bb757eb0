#!/bin/bash
# One node's part of a job: start the trainer's processes on this node with accelerate launch, pass
# SIGUSR1/SIGTERM on to them, and exit with the run's exit code. single_node.sbatch runs it
# directly; multi_node.sbatch runs it as one srun task per node. Takes the batch script's arguments.
set -uo pipefail
PENDING=""  # a signal not yet passed to every training process of this node
SENT=""  # the pids it was passed to
# One during this script's own set-up is kept for the training processes; the batch shell passes
# a signal on only once these traps are in ($FACEGAN_NODE_READY: see run_forwarding_signals).
trap 'PENDING=USR1' USR1
trap 'PENDING=TERM' TERM
[ -n "${FACEGAN_NODE_READY:-}" ] && : > "$FACEGAN_NODE_READY"
HERE=`dirname "${BASH_SOURCE[0]}"`
source "$HERE/common.sh"
find_root
parse_settings "$@"
check_settings
processes_per_node

MACHINES=${FACEGAN_MACHINES:-1}
if [ "$MACHINES" -gt 1 ] && [ -z "${SLURM_PROCID:-}" ]; then
    die "node.sh runs as one srun task per node (SLURM_PROCID unset): submit launch/slurm/multi_node.sbatch with sbatch"
fi
MACHINE_RANK=${SLURM_PROCID:-0}
build_launch_command "$MACHINES" "$MACHINE_RANK" "${FACEGAN_HEAD:-127.0.0.1}"

# The training processes write their pids here once their stop handlers are in (train/run/stop.py).
export FACEGAN_PID_DIR
FACEGAN_PID_DIR=`mktemp -d "${TMPDIR:-/tmp}/facegan-pids.XXXXXX"`
trap 'rm -rf "$FACEGAN_PID_DIR"' EXIT
failpoint_pause node_pause "before the training processes start"
trap 'say "node $MACHINE_RANK: SIGUSR1, passing it to the training processes"; SENT=""; forward_to_ranks USR1' USR1
trap 'say "node $MACHINE_RANK: SIGTERM, passing it to the training processes"; SENT=""; forward_to_ranks TERM' TERM

HOST=`hostname -s`
SHOWN=`print_command "${LAUNCH[@]}"`
say "node $MACHINE_RANK of $MACHINES on $HOST: $SHOWN"
# The launcher ignores SIGUSR1 (an inherited SIG_IGN): srun passes a signal to every process of a
# task, and accelerate launch, torchrun's agent, would die of it and abandon its workers.
(trap '' USR1; exec "${LAUNCH[@]}") &
LAUNCHER=$!
while kill -0 "$LAUNCHER" 2> /dev/null; do
    [ -n "$PENDING" ] && forward_to_ranks "$PENDING"
    sleep 1 &
    wait $! 2> /dev/null
done
wait "$LAUNCHER"
CODE=`run_exit_code $?`
say "node $MACHINE_RANK: the training processes ended (exit code $CODE)"
exit "$CODE"
