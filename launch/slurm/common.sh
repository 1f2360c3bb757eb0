# Shared by single_node.sbatch, multi_node.sbatch and node.sh: settings, checks, the launch command,
# and the requeue on the trainers' resumable exit code. Sourced, never run.
#
# Command substitutions in these scripts are written with backticks, never $(...) or <(...): they
# trap SIGUSR1/SIGTERM from their first line, and bash 5.2 (Debian 12's 5.2.15 here) can run a
# trap in the middle of re-parsing a $(...), after which both fail to parse ("unexpected EOF while
# looking for matching `)'"): the signal is lost and the substitution's value with it (node.sh
# then lost its `source` of this file). Backticks take another path: 0 of 40 runs failed, against
# 6 of 25 with $(...), each hit by 10 signals (tests/test_slurm.py holds the scripts to it).
#
# Settings, as flags after the script's name or as environment variables (flags win):
#   --trainer NAME          TRAINER          wgangp, lightweight_gan or dcgan (required)
#   --out DIR               OUT              the run directory, on storage every node sees (required)
#   --gpus-per-node N       GPUS_PER_NODE    training processes per node, one per GPU (default: every GPU
#                                            Slurm allocated on the node)
#   --cpu N                 CPU_PROCESSES    the CPU variant: N CPU processes per node, no GPUs
#   --mixed-precision P     MIXED_PRECISION  no, fp16 or bf16 (default: the accelerate config's)
#   --deepspeed N           DEEPSPEED        DeepSpeed ZeRO stage 1 or 2 for both networks (default: off, DDP):
#                                            launch/accelerate/deepspeed_zeroN.yaml, or with --accelerate-config
#                                            the trainer's --deepspeed N (GPUs and --cpu alike)
#   --accelerate-config F   ACCELERATE_CONFIG  (default: launch/accelerate/multi_gpu_<precision>.yaml on
#                                            one node, launch/accelerate/multi_node.yaml on several)
#   --max-restarts N        MAX_RESTARTS     requeues after a resumable stop (default 3)
#   --resume                RESUME=1         continue the run already in --out on the first start too
#   --dry-run               DRY_RUN=1        print the commands instead of running them
#   -- FLAGS...             TRAINER_FLAGS    the trainer's own flags (see `python train/wgangp.py --help`)
# Nodes, partition, time and GPUs are sbatch's own options: sbatch --nodes 2 --gres gpu:4 --time 24:00:00 ...

TRAINERS="wgangp lightweight_gan dcgan"
RESUMABLE_EXIT=75  # RunStatus.STOPPED.exit_code in train/run/outcome.py
BAD_INPUT_EXIT=2

die() {
    echo "error: $*" >&2
    exit "$BAD_INPUT_EXIT"
}

say() {
    echo "[`date +%T`] $*"
}

# The repository: sbatch runs a copy of the batch script from its spool, so $0 does not lead back to it.
find_root() {
    local candidate beside
    beside=`dirname "${BASH_SOURCE[0]}"`
    beside=`cd "$beside/../.." 2>/dev/null && pwd`
    for candidate in "${FACEGAN_ROOT:-}" "$beside" "${SLURM_SUBMIT_DIR:-}"; do
        if [ -n "$candidate" ] && [ -f "$candidate/train/run/runner.py" ]; then
            ROOT=`cd "$candidate" && pwd`
            return
        fi
    done
    die "cannot find the project: submit from the repository's root, or set FACEGAN_ROOT=/path/to/repository"
}

parse_settings() {
    TRAINER=${TRAINER:-}
    OUT=${OUT:-}
    GPUS_PER_NODE=${GPUS_PER_NODE:-}
    CPU_PROCESSES=${CPU_PROCESSES:-}
    MIXED_PRECISION=${MIXED_PRECISION:-}
    DEEPSPEED=${DEEPSPEED:-}
    ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-}
    MAX_RESTARTS=${MAX_RESTARTS:-3}
    RESUME=${RESUME:-0}
    DRY_RUN=${DRY_RUN:-0}
    # shellcheck disable=SC2206  # TRAINER_FLAGS is a word list on purpose
    FLAGS=(${TRAINER_FLAGS:-})
    while [ $# -gt 0 ]; do
        case "$1" in
            --trainer) TRAINER=${2:-}; shift ;;
            --out) OUT=${2:-}; shift ;;
            --gpus-per-node) GPUS_PER_NODE=${2:-}; shift ;;
            --cpu) CPU_PROCESSES=${2:-}; shift ;;
            --mixed-precision) MIXED_PRECISION=${2:-}; shift ;;
            --deepspeed) DEEPSPEED=${2:-}; shift ;;
            --accelerate-config) ACCELERATE_CONFIG=${2:-}; shift ;;
            --max-restarts) MAX_RESTARTS=${2:-}; shift ;;
            --resume) RESUME=1 ;;
            --dry-run) DRY_RUN=1 ;;
            --) shift; FLAGS+=("$@"); break ;;
            *) die "unknown option $1 (the trainer's own flags go after --; see the top of launch/slurm/common.sh)" ;;
        esac
        shift
    done
}

is_count() {
    [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ]
}

check_settings() {
    [ -n "$TRAINER" ] || die "no trainer: add --trainer NAME or set TRAINER (one of: $TRAINERS)"
    [[ " $TRAINERS " == *" $TRAINER "* ]] || die "unknown trainer '$TRAINER' (--trainer / TRAINER): use one of: $TRAINERS"
    [ -n "$OUT" ] || die "no output directory: add --out DIR or set OUT (on storage every node sees)"
    [[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "--max-restarts / MAX_RESTARTS '$MAX_RESTARTS': give a whole number"
    case "$MIXED_PRECISION" in "" | no | fp16 | bf16) ;; *) die "--mixed-precision / MIXED_PRECISION '$MIXED_PRECISION': use no, fp16 or bf16" ;; esac
    case "$DEEPSPEED" in "" | 1 | 2) ;; *) die "--deepspeed / DEEPSPEED '$DEEPSPEED': use 1 or 2 (the ZeRO stage; 0 is DDP, the default, and 3 is refused: see the README's DeepSpeed section)" ;; esac
    if [ -n "$ACCELERATE_CONFIG" ] && [ ! -f "$ACCELERATE_CONFIG" ]; then
        die "--accelerate-config / ACCELERATE_CONFIG $ACCELERATE_CONFIG: no such file"
    fi
    OUT=`realpath -m "$OUT"`
    if [ "$DRY_RUN" != 1 ] && ! command -v accelerate > /dev/null; then
        die "accelerate is not on PATH: activate the project's environment before sbatch (Slurm passes it on)"
    fi
}

# Processes on each node, checked against what Slurm allocated to this job on this node.
processes_per_node() {
    if [ -n "$CPU_PROCESSES" ]; then
        is_count "$CPU_PROCESSES" || die "--cpu / CPU_PROCESSES '$CPU_PROCESSES': give a number of processes, 1 or more"
        local cpus=${SLURM_CPUS_ON_NODE:-}
        if [ -n "$cpus" ] && [ "$CPU_PROCESSES" -gt "$cpus" ]; then
            die "--cpu / CPU_PROCESSES $CPU_PROCESSES: more processes than the $cpus CPUs allocated on this node; ask sbatch for --cpus-per-task $CPU_PROCESSES or lower it"
        fi
        PER_NODE=$CPU_PROCESSES
        return
    fi
    local allocated=${SLURM_GPUS_ON_NODE:-}
    if [ -z "$allocated" ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        allocated=`awk -F, '{print NF}' <<< "$CUDA_VISIBLE_DEVICES"`
    fi
    if [ -n "$GPUS_PER_NODE" ]; then
        is_count "$GPUS_PER_NODE" || die "--gpus-per-node / GPUS_PER_NODE '$GPUS_PER_NODE': give a number of GPUs, 1 or more"
        if [ "$DRY_RUN" != 1 ] || [ -n "$allocated" ]; then
            if [ -z "$allocated" ] || [ "$GPUS_PER_NODE" -gt "$allocated" ]; then
                die "--gpus-per-node / GPUS_PER_NODE $GPUS_PER_NODE: more GPUs than Slurm allocated on this node (${allocated:-none}); submit with sbatch --gres=gpu:$GPUS_PER_NODE, or use --cpu N for the CPU variant"
            fi
        fi
        PER_NODE=$GPUS_PER_NODE
    elif [ -n "$allocated" ] && [ "$allocated" -ge 1 ]; then
        PER_NODE=$allocated
    elif [ "$DRY_RUN" = 1 ]; then
        PER_NODE=1
    else
        die "no GPUs allocated on this node: submit with sbatch --gres=gpu:N (and --gpus-per-node N), or use --cpu N for the CPU variant"
    fi
}

# Whether this start continues the run in $OUT: a rerun after a requeue, or asked for.
resuming() {
    [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] || [ "$RESUME" = 1 ]
}

# The rendezvous port: one per job, so that two jobs sharing a node do not collide.
rendezvous_port() {
    echo $((20000 + ${SLURM_JOB_ID:-0} % 20000))
}

# LAUNCH: the command one node runs. Arguments: machines, this machine's rank, head node address.
build_launch_command() {
    local machines=$1 machine_rank=$2 head=$3
    local config=$ACCELERATE_CONFIG
    if [ -z "$config" ] && [ -n "$DEEPSPEED" ]; then
        config=$ROOT/launch/accelerate/deepspeed_zero$DEEPSPEED.yaml
    elif [ -z "$config" ]; then
        if [ "$machines" -gt 1 ]; then
            config=$ROOT/launch/accelerate/multi_node.yaml
        else
            config=$ROOT/launch/accelerate/multi_gpu_${MIXED_PRECISION:-bf16}.yaml
            [ -f "$config" ] || config=$ROOT/launch/accelerate/multi_gpu_bf16.yaml
        fi
    fi
    LAUNCH=(accelerate launch --config_file "$config")
    if [ -n "$CPU_PROCESSES" ] && [ -n "$DEEPSPEED" ]; then
        # Never --cpu under DeepSpeed: Accelerate would drop it; without CUDA it runs on the CPU anyway.
        LAUNCH+=(--mixed_precision "${MIXED_PRECISION:-no}")
    elif [ -n "$CPU_PROCESSES" ]; then
        LAUNCH+=(--cpu --mixed_precision "${MIXED_PRECISION:-no}")
    elif [ -n "$MIXED_PRECISION" ]; then
        LAUNCH+=(--mixed_precision "$MIXED_PRECISION")
    fi
    LAUNCH+=(--num_machines "$machines" --machine_rank "$machine_rank" --num_processes $((machines * PER_NODE)))
    LAUNCH+=(--main_process_ip "$head" --main_process_port "`rendezvous_port`")
    if [ -n "$DEEPSPEED" ] && [ "$machines" -gt 1 ]; then
        LAUNCH+=(--deepspeed_multinode_launcher standard)  # torchrun on each node, as for DDP, not pdsh
    fi
    LAUNCH+=("$ROOT/train/$TRAINER.py" --out "$OUT")
    if resuming; then
        LAUNCH+=(--resume auto)
    fi
    if [ -n "$DEEPSPEED" ] && [ -n "$ACCELERATE_CONFIG" ]; then
        LAUNCH+=(--deepspeed "$DEEPSPEED")  # the user's own accelerate config: the trainer's flag says it
    fi
    LAUNCH+=("${FLAGS[@]}")
}

# The exit code of the run that just ended in $OUT: its exit_status.json when it wrote one
# (accelerate launch turns every worker's own code into 1), else the launcher's.
run_exit_code() {
    local launcher_code=$1 status=$OUT/exit_status.json
    if [ -f "$status" ]; then
        python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["exit_code"])' "$status"
    else
        echo "$launcher_code"
    fi
}

# After the run: requeue on a resumable stop while restarts are left; the job's exit code otherwise.
requeue_or_exit() {
    local code=$1 restarts=${SLURM_RESTART_COUNT:-0}
    if [ "$code" != "$RESUMABLE_EXIT" ]; then
        say "the run ended with exit code $code"
        exit "$code"
    fi
    if [ "$restarts" -ge "$MAX_RESTARTS" ]; then
        say "stopped early (resumable) after $restarts restarts, the most --max-restarts / MAX_RESTARTS allows; submit again with --resume to continue in $OUT"
        exit "$RESUMABLE_EXIT"
    fi
    say "stopped early with a checkpoint; requeueing job $SLURM_JOB_ID (restart $((restarts + 1)) of at most $MAX_RESTARTS)"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}

# Runs "$@" (after its kind: node.sh or srun) in the background and passes SIGUSR1/SIGTERM on to
# it, a signal that came during the batch script's set-up ($EARLY_SIGNAL) included; returns its
# exit code. node.sh gets a signal only once its traps are in (it creates $FACEGAN_NODE_READY
# first thing): before, the signal would end it. srun forwards signals to its tasks itself.
# Bash runs a trap only between commands, so the child is waited for in short slices.
run_forwarding_signals() {
    local kind=$1 ready code
    shift
    ready=`mktemp -u "${TMPDIR:-/tmp}/facegan-ready.XXXXXX"`
    [ "$kind" = srun ] && : > "$ready"
    FACEGAN_NODE_READY=$ready "$@" &
    CHILD=$!
    PENDING_SIGNAL=$EARLY_SIGNAL
    [ -n "$PENDING_SIGNAL" ] && say "SIG$PENDING_SIGNAL came during the set-up: asking the training processes to stop"
    trap 'say "SIGUSR1: asking the training processes to stop"; PENDING_SIGNAL=USR1; pass_pending "$ready"' USR1
    trap 'say "SIGTERM: asking the training processes to stop"; PENDING_SIGNAL=TERM; pass_pending "$ready"' TERM
    while kill -0 "$CHILD" 2> /dev/null; do
        pass_pending "$ready"
        sleep 1 &
        wait $! 2> /dev/null
    done
    wait "$CHILD"
    code=$?
    trap - USR1 TERM
    rm -f "$ready"
    return "$code"
}

pass_pending() {
    if [ -n "$PENDING_SIGNAL" ] && [ -e "$1" ]; then
        kill "-$PENDING_SIGNAL" "$CHILD" 2> /dev/null
        PENDING_SIGNAL=""
    fi
}

# A test-only pause in a launch script's set-up (FACEGAN_FAILPOINTS=NAME=SECONDS, as the trainers'
# failpoints): a window in which a test sends a signal. Said on stdout; a trapped signal ends it.
failpoint_pause() {
    local name=$1 where=$2 seconds pattern
    pattern="s/.*\b$name=\([0-9.]*\).*/\1/p"
    seconds=`sed -n "$pattern" <<< "${FACEGAN_FAILPOINTS:-}"`
    [ -n "$seconds" ] || return 0
    say "failpoint $name: pausing ${seconds} s $where"
    sleep "$seconds" &
    wait $! 2> /dev/null
    kill $! 2> /dev/null
}

# node.sh's signal on to the training processes, which list their pids in $FACEGAN_PID_DIR as
# rankN.pid once their stop handlers are in (train/run/stop.py): each listed pid not yet in $SENT
# gets signal $1. $PENDING keeps the signal until $PER_NODE processes have had it, for node.sh to
# pass again to those that start later. A file without a pid yet, or a pid that cannot be
# signalled, counts as not reached: a run still starting must not lose the request.
forward_to_ranks() {
    local pid_file pid
    for pid_file in "$FACEGAN_PID_DIR"/rank*.pid; do
        pid=`cat "$pid_file" 2> /dev/null` || continue
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        case " $SENT " in *" $pid "*) continue ;; esac
        kill "-$1" "$pid" 2> /dev/null && SENT="$SENT $pid"
    done
    local reached
    reached=`wc -w <<< "$SENT"`
    if [ "$reached" -lt "$PER_NODE" ]; then
        PENDING=$1
    else
        PENDING=""
    fi
}

# The arguments as given, less --dry-run (before the trainer's flags): what a real run passes on.
# Into the array NODE_ARGS (no process substitution: see the note on backticks at the top).
without_dry_run() {
    NODE_ARGS=()
    while [ $# -gt 0 ]; do
        [ "$1" = -- ] && break
        [ "$1" != --dry-run ] && NODE_ARGS+=("$1")
        shift
    done
    NODE_ARGS+=("$@")
}

print_command() {
    printf '%q ' "$@"
    printf '\n'
}
