"""launch/slurm/: the sbatch scripts' commands, checks and requeue bound, then the scripts on a
real single-node Slurm (tests/slurm_cluster.py): a job preempted by its time limit, and two tasks
standing in for two nodes, side by side."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.slurm_cluster import WAITING_OR_RUNNING, LocalSlurm, WatchedJob, unavailable_reason
from train.report.metrics import read_metrics
from train.run.outcome import RunStatus

SLURM = ROOT / "launch" / "slurm"
RESUMABLE = RunStatus.STOPPED.exit_code
# The project's environment first on PATH, as for a user who activated it before sbatch.
ENV = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


SETTINGS = {"TRAINER", "OUT", "GPUS_PER_NODE", "CPU_PROCESSES", "MIXED_PRECISION", "DEEPSPEED", "ACCELERATE_CONFIG", "MAX_RESTARTS",
            "RESUME", "DRY_RUN", "TRAINER_FLAGS", "CUDA_VISIBLE_DEVICES"}


def script_env(env: dict | None = None) -> dict[str, str]:
    """A launch script's environment as inside (or outside) a job: none of this shell's Slurm variables or settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "FACEGAN_")) and k not in SETTINGS}
    return {**clean, **ENV, **(env or {})}


def bash(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM / script), *args], capture_output=True, text=True, timeout=60, env=script_env(env))


# ---- without a cluster: the commands a dry run prints, and bad input ----


def test_single_node_dry_run_prints_the_launch_with_the_allocation_and_the_trainer_flags():
    result = bash("single_node.sbatch", "--dry-run", "--trainer", "wgangp", "--out", "runs/x", "--", "--resolution", "128",
                  env={"SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_ID": "1234"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"accelerate launch --config_file {ROOT}/launch/accelerate/multi_gpu_bf16.yaml --num_machines 1 --machine_rank 0"
        f" --num_processes 4 --main_process_ip 127.0.0.1 --main_process_port 21234 {ROOT}/train/wgangp.py"
        f" --out {Path.cwd()}/runs/x --resolution 128"
    )


def test_the_dcgan_trainer_launches_like_the_others():
    result = bash("single_node.sbatch", "--dry-run", "--trainer", "dcgan", "--out", "runs/d", "--", "--pack", "2",
                  env={"SLURM_GPUS_ON_NODE": "2", "SLURM_JOB_ID": "7"})
    assert result.returncode == 0, result.stderr
    assert f"--num_processes 2 --main_process_ip 127.0.0.1 --main_process_port 20007 {ROOT}/train/dcgan.py" in result.stdout
    assert result.stdout.strip().endswith("--pack 2")


def test_a_rerun_resumes_and_fp16_picks_the_t4_config():
    result = bash("single_node.sbatch", "--trainer", "lightweight_gan", "--out", "/r", "--mixed-precision", "fp16",
                  env={"DRY_RUN": "1", "SLURM_GPUS_ON_NODE": "2", "SLURM_RESTART_COUNT": "1"})
    assert result.returncode == 0, result.stderr
    assert "launch/accelerate/multi_gpu_fp16.yaml --mixed_precision fp16" in result.stdout
    assert "--num_processes 2" in result.stdout
    assert result.stdout.rstrip().endswith("train/lightweight_gan.py --out /r --resume auto")


def test_multi_node_dry_run_outside_an_allocation_shows_where_the_head_node_goes():
    result = bash("multi_node.sbatch", "--dry-run", "--trainer", "wgangp", "--out", "/r", "--gpus-per-node", "4")
    assert result.returncode == 0, result.stderr
    assert "--num_machines 2 --machine_rank 1 --num_processes 8 --main_process_ip HEAD_NODE" in result.stdout


def test_the_cpu_variant_asks_accelerate_for_cpu_processes():
    result = bash("single_node.sbatch", "--dry-run", "--trainer", "wgangp", "--out", "/r", "--cpu", "2",
                  env={"SLURM_CPUS_ON_NODE": "2"})
    assert result.returncode == 0, result.stderr
    assert "--cpu --mixed_precision no --num_machines 1 --machine_rank 0 --num_processes 2" in result.stdout


def test_deepspeed_picks_the_zero_config_on_gpus_and_on_cpus_without_cpu():
    gpus = bash("single_node.sbatch", "--dry-run", "--trainer", "wgangp", "--out", "/r", "--deepspeed", "2",
                env={"SLURM_GPUS_ON_NODE": "4"})
    assert gpus.returncode == 0, gpus.stderr
    assert f"--config_file {ROOT}/launch/accelerate/deepspeed_zero2.yaml --num_machines 1" in gpus.stdout
    assert "--num_processes 4" in gpus.stdout and gpus.stdout.rstrip().endswith("train/wgangp.py --out /r")
    cpus = bash("single_node.sbatch", "--dry-run", "--trainer", "lightweight_gan", "--out", "/r", "--cpu", "2", "--deepspeed", "1",
                env={"SLURM_CPUS_ON_NODE": "2"})
    assert cpus.returncode == 0, cpus.stderr
    assert "deepspeed_zero1.yaml --mixed_precision no --num_machines 1 --machine_rank 0 --num_processes 2" in cpus.stdout
    assert " --cpu " not in cpus.stdout  # Accelerate drops DeepSpeed under --cpu


def test_deepspeed_with_an_own_accelerate_config_passes_the_flag_and_several_nodes_use_torchrun(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("distributed_type: MULTI_GPU\n")
    own = bash("single_node.sbatch", "--dry-run", "--trainer", "dcgan", "--out", "/r", "--accelerate-config", str(config),
               "--deepspeed", "2", "--", "--batch-size", "32", env={"SLURM_GPUS_ON_NODE": "2"})
    assert own.returncode == 0, own.stderr
    assert own.stdout.rstrip().endswith("train/dcgan.py --out /r --deepspeed 2 --batch-size 32")
    nodes = bash("multi_node.sbatch", "--dry-run", "--trainer", "wgangp", "--out", "/r", "--gpus-per-node", "4", "--deepspeed", "1")
    assert nodes.returncode == 0, nodes.stderr
    assert "deepspeed_zero1.yaml --num_machines 2 --machine_rank 1" in nodes.stdout
    assert "--deepspeed_multinode_launcher standard" in nodes.stdout
    assert "--deepspeed 1" in nodes.stdout.splitlines()[0]  # srun passes it on to each node's node.sh


@pytest.mark.parametrize(
    "script, args, env, message",
    [
        ("single_node.sbatch", ["--trainer", "stylegan", "--out", "/r"], {},
         "error: unknown trainer 'stylegan' (--trainer / TRAINER): use one of: wgangp lightweight_gan dcgan"),
        ("single_node.sbatch", [], {"TRAINER": "wgangp"}, "error: no output directory: add --out DIR or set OUT"),
        ("single_node.sbatch", ["--trainer", "wgangp", "--out", "/r", "--gpus-per-node", "4"], {"SLURM_GPUS_ON_NODE": "2"},
         "error: --gpus-per-node / GPUS_PER_NODE 4: more GPUs than Slurm allocated on this node (2)"),
        ("single_node.sbatch", ["--trainer", "wgangp", "--out", "/r"], {},
         "error: no GPUs allocated on this node: submit with sbatch --gres=gpu:N"),
        ("single_node.sbatch", ["--trainer", "wgangp", "--out", "/r", "--cpu", "4"], {"SLURM_CPUS_ON_NODE": "2"},
         "error: --cpu / CPU_PROCESSES 4: more processes than the 2 CPUs allocated on this node"),
        ("single_node.sbatch", ["--trainer", "wgangp", "--out", "/r", "--cpu", "1"], {"SLURM_JOB_NUM_NODES": "2"},
         "error: this job has 2 nodes and single_node.sbatch uses one: submit launch/slurm/multi_node.sbatch"),
        ("multi_node.sbatch", ["--trainer", "wgangp", "--out", "/r", "--cpu", "1"], {},
         "error: multi_node.sbatch runs inside a Slurm allocation, where srun starts one task per node"),
        ("node.sh", ["--trainer", "wgangp", "--out", "/r", "--cpu", "1"], {"FACEGAN_MACHINES": "2"},
         "error: node.sh runs as one srun task per node (SLURM_PROCID unset)"),
        ("single_node.sbatch", ["--trainer", "wgangp", "--out", "/r", "--deepspeed", "3"], {"SLURM_GPUS_ON_NODE": "2"},
         "error: --deepspeed / DEEPSPEED '3': use 1 or 2 (the ZeRO stage; 0 is DDP, the default, and 3 is refused"),
        ("single_node.sbatch", ["--trainer", "wgangp", "--out", "/r", "--resolution", "128"], {},
         "error: unknown option --resolution (the trainer's own flags go after --"),
    ],
)
def test_bad_input_is_one_line_naming_the_setting_and_the_fix(script, args, env, message, tmp_path):
    result = bash(script, *args, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message), result.stderr
    assert result.stdout == ""


def test_requeues_stop_at_the_maximum_restarts():
    code = f'source "{SLURM}/common.sh"; OUT=/r; MAX_RESTARTS=2; SLURM_JOB_ID=5 SLURM_RESTART_COUNT=2 requeue_or_exit {RESUMABLE}'
    result = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == RESUMABLE
    assert "after 2 restarts, the most --max-restarts / MAX_RESTARTS allows; submit again with --resume" in result.stdout


def test_a_signal_is_kept_for_a_rank_whose_pid_file_is_not_written_yet(tmp_path):
    """node.sh passes a signal to the ranks' listed pids; a rank caught between creating its pid
    file and writing the pid (a starved process can stay there a while) must get it later, not be
    counted as reached."""
    ranks = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        code = f'''source "{SLURM}/common.sh"; PER_NODE=2; FACEGAN_PID_DIR="{tmp_path}"; SENT=""
            : > "{tmp_path}/rank0.pid"; echo {ranks[1].pid} > "{tmp_path}/rank1.pid"
            forward_to_ranks USR1; echo "one of two: ${{PENDING:-none}}"
            echo {ranks[0].pid} > "{tmp_path}/rank0.pid"
            forward_to_ranks USR1; echo "both: ${{PENDING:-none}}"
            forward_to_ranks USR1; echo "sent:$SENT"'''
        result = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30)
        assert result.stdout.splitlines() == ["one of two: USR1", "both: none", f"sent: {ranks[1].pid} {ranks[0].pid}"], result.stderr
        assert [rank.wait(timeout=30) for rank in ranks] == [-signal.SIGUSR1, -signal.SIGUSR1]
    finally:
        for rank in ranks:
            rank.kill()


SUBSTITUTION = re.compile(r"\$\((?!\()|[<>]\(")  # $(...), <(...), >(...); not $((...)) arithmetic


def test_the_launch_scripts_write_command_substitutions_in_backticks():
    """bash 5.2 can run a trap in the middle of re-parsing a $(...) and then fail to parse both (see
    common.sh's header); the scripts trap stop signals from their first line, so none is used."""
    for script in sorted(SLURM.iterdir()):
        code = [(number, line) for number, line in enumerate(script.read_text().splitlines(), 1) if not line.lstrip().startswith("#")]
        assert [f"{script.name}:{number}: {line}" for number, line in code if SUBSTITUTION.search(line)] == []


def test_signals_during_the_scripts_substitutions_are_kept_and_break_nothing(tmp_path):
    """The early trap of the launch scripts, hit by SIGUSR1 40 times while common.sh's functions run
    their substitutions: every run keeps the signal and says no parse error."""
    ready = tmp_path / "ready"
    code = f'''trap 'PENDING=USR1' USR1; PENDING=""
        source "{SLURM}/common.sh"; : > "{ready}"
        for i in `seq 1 60`; do line=`say "step $i"`; find_root; done; echo "pending=$PENDING root=$ROOT"'''
    for _ in range(12):
        ready.unlink(missing_ok=True)
        process = subprocess.Popen(["bash", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=script_env({"FACEGAN_ROOT": str(ROOT)}))
        deadline = time.monotonic() + 30
        while not ready.exists():  # its word, not a sleep
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        for _ in range(40):
            os.kill(process.pid, signal.SIGUSR1)
            time.sleep(0.002)
        stdout, stderr = process.communicate(timeout=60)
        assert (process.returncode, stderr, stdout) == (0, "", f"pending=USR1 root={ROOT}\n")


# A stop signal while a launch script is still setting itself up, before the run exists: outside
# Slurm (no requeue: --max-restarts 0), each script paused at a failpoint that says where it is.
SET_UP_PAUSES = {"the batch shell": "setup_pause", "node.sh": "node_pause"}


def signalled_during_set_up(folder: Path, failpoint: str) -> tuple[int, str, Path]:
    """single_node.sbatch run by bash, paused at `failpoint`; SIGUSR1 to the batch shell (as Slurm's
    --signal=B: sends it) once the pause is said. Its exit code, output and --out."""
    out = folder / "run"
    command = ["bash", str(SLURM / "single_node.sbatch"), "--trainer", "wgangp", "--out", str(out), "--cpu", "1",
               "--max-restarts", "0", "--", "--debug", "--max-steps", "3"]
    log = folder / "output.log"  # a file, not a pipe: a shell's background sleep could hold a pipe open
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=folder, stdout=output, stderr=subprocess.STDOUT, text=True,
                                   env=script_env({"FACEGAN_FAILPOINTS": f"{failpoint}=600"}), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while f"failpoint {failpoint}" not in log.read_text():  # its word, not a sleep
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGUSR1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what is left: a background sleep, where a script died of the signal
        process.wait()
    return process.returncode, log.read_text(), out


@pytest.fixture(scope="module")
def set_up_signals(tmp_path_factory) -> Iterator[dict[str, Future]]:
    """Both runs side by side: each is mostly one process starting."""
    with ThreadPoolExecutor(len(SET_UP_PAUSES)) as pool:
        yield {where: pool.submit(signalled_during_set_up, tmp_path_factory.mktemp("set_up"), failpoint)
               for where, failpoint in SET_UP_PAUSES.items()}


@pytest.mark.slow
@pytest.mark.parametrize("where", SET_UP_PAUSES)
def test_a_stop_signal_during_a_launch_scripts_set_up_stops_the_run_resumably(set_up_signals, where):
    """Without a trap from the script's first line, bash ends at once on SIGUSR1 (exit 138) and
    the job with it; kept, the signal reaches the trainer once it is there, which stops resumably."""
    code, output, out = set_up_signals[where].result()
    assert code == RESUMABLE, output[-3000:]
    assert "rank 0: SIGUSR1 received" in output, output[-3000:]
    status = json.loads((out / "exit_status.json").read_text())
    assert status["status"] == "stopped" and "SIGUSR1" in status["reason"], status
    assert "after 0 restarts, the most --max-restarts / MAX_RESTARTS allows" in output


# ---- on a real Slurm ----


@pytest.fixture(scope="session")  # the real jobs' tests run first and last (conftest): one cluster for both
def slurm(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        if os.environ.get("FACEGAN_REQUIRE_SLURM") == "1":  # set by .ci/run, which installs Slurm
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def test_multi_node_dry_run_prints_srun_and_each_nodes_launch(slurm):
    result = bash("multi_node.sbatch", "--trainer", "wgangp", "--out", "/shared/run", "--gpus-per-node", "8",
                  env={"DRY_RUN": "1", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "3", "SLURM_GPUS_ON_NODE": "8",
                       "SLURM_JOB_NODELIST": "gpu[01-03]", "SLURM_CONF": str(slurm.conf)})
    assert result.returncode == 0, result.stderr
    srun, *nodes = result.stdout.strip().splitlines()
    assert srun.startswith("FACEGAN_MACHINES=3 FACEGAN_HEAD=gpu01 srun --ntasks=3 --kill-on-bad-exit=1 bash")
    assert "--dry-run" not in srun
    assert len(nodes) == 3
    for rank, line in enumerate(nodes):
        assert line.startswith(f"node {rank}: accelerate launch --config_file {ROOT}/launch/accelerate/multi_node.yaml")
        assert f"--num_machines 3 --machine_rank {rank} --num_processes 24 --main_process_ip gpu01 --main_process_port 20077" in line


def logged(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return read_metrics(path) if path.exists() else []


def stamped(log: str, pattern: str) -> list[datetime]:
    """When the batch shell said `pattern` (its lines start with [HH:MM:SS])."""
    return [datetime.strptime(m.group(1), "%H:%M:%S") for m in re.finditer(rf"\[(\d\d:\d\d:\d\d)\] {pattern}", log)]


# Both real jobs start at once, each with a thread doing what its test would do between sbatch and
# the end (the node declares CPUs for both): the file waits for the longer job, not for the sum.
TIME_LIMITED_STEPS = 40
TWO_NODE_STEPS = 6


def submit_time_limited_job(slurm: LocalSlurm, folder: Path) -> WatchedJob:
    """Slurm sends B:USR1 at its first time-limit check (every 30 s) once less than 110 s is left of
    2 minutes: 10 to 40 s in. 40 steps of at least 1 s each (a test-only failpoint, for the first
    start only) outlast that on any machine. Once the batch shell says it has the signal, the job
    gets 30 minutes (it runs at the lowest priority beside the suite), so that the rerun is not signalled again."""
    out, log = folder / "run", folder / "slurm.out"
    steps = TIME_LIMITED_STEPS
    job = slurm.sbatch(
        "--time=2", "--signal=B:USR1@110", f"--output={log}", str(SLURM / "single_node.sbatch"),
        "--trainer", "wgangp", "--out", str(out), "--cpu", "1", "--max-restarts", "3",
        "--", "--debug", "--max-steps", str(steps), "--log-every", "1", "--sample-every", str(steps // 2),
        "--ckpt-every", str(steps // 4),
        env={**ENV, "FACEGAN_FAILPOINTS": "step_pause=1"}, cwd=folder,  # submitted from elsewhere than the repository
    )
    return WatchedJob(slurm, job, log, ready=lambda: log.exists() and "SIGUSR1: asking" in log.read_text(),
                      act=lambda: slurm.scontrol("update", f"JobId={job}", "TimeLimit=30"), timeout=420)


def submit_two_node_job(slurm: LocalSlurm, folder: Path) -> WatchedJob:
    """Two tasks standing in for two nodes; after 2 steps the batch shell gets what
    --signal=B:USR1@N sends it at the time limit, and srun must carry it to both "nodes"."""
    out, log = folder / "run", folder / "slurm.out"
    job = slurm.sbatch(
        "--time=15", "--signal=B:USR1@60", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2", f"--output={log}", str(SLURM / "multi_node.sbatch"),
        "--trainer", "wgangp", "--out", str(out), "--cpu", "1", "--", "--debug", "--max-steps", str(TWO_NODE_STEPS), "--log-every", "1",
        env=ENV, cwd=ROOT,
    )
    signal_batch_shell = ["scancel", "--batch", "--signal=USR1", str(job)]
    return WatchedJob(slurm, job, log, ready=lambda: len(logged(out)) >= 2,
                      act=lambda: subprocess.run(signal_batch_shell, env=slurm.env, check=True, timeout=30), timeout=420)


@dataclass(frozen=True)
class RealJobs:
    time_limited: WatchedJob
    two_nodes: WatchedJob


@pytest.fixture(scope="session")
def real_jobs(slurm, tmp_path_factory) -> Iterator[RealJobs]:
    """Each test waits for its own job only: a job that fails, or a watcher that gives up, costs
    the other test nothing; the cluster's teardown cancels what is left."""
    jobs = RealJobs(submit_time_limited_job(slurm, tmp_path_factory.mktemp("time_limited")),
                    submit_two_node_job(slurm, tmp_path_factory.mktemp("two_nodes")))
    yield jobs
    for job in (jobs.time_limited, jobs.two_nodes):
        job.stop_watching()


def run_folder(job: WatchedJob) -> Path:
    """The trainer's --out, beside the job's log: the submit functions' layout."""
    return job.log.parent / "run"


@pytest.mark.slow
@pytest.mark.submits_background_jobs
def test_both_real_jobs_are_accepted_and_queued_or_running_while_the_suite_goes_on(real_jobs):
    for job in (real_jobs.time_limited, real_jobs.two_nodes):
        assert job.cluster.job(job.id).get("JobState") in WAITING_OR_RUNNING


@pytest.mark.slow
@pytest.mark.waits_for_background_jobs
def test_a_job_signalled_by_its_time_limit_checkpoints_requeues_itself_and_finishes(real_jobs):
    job, steps = real_jobs.time_limited, TIME_LIMITED_STEPS
    out = run_folder(job)
    state = job.wait_until_done(timeout=300)
    text = job.log.read_text()
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), text[-4000:]
    assert int(state["Restarts"]) == 1
    assert "rank 0: SIGUSR1 received; stopping after this step with a checkpoint" in text
    assert re.search(r"resumed from step \d+", text)
    assert [r["step"] for r in logged(out)] == list(range(1, steps + 1))  # every step exactly once
    for made in ("config.json", f"samples/step_{steps:06d}.png", f"checkpoints/step_{steps:06d}", "progress.gif", "loss.png"):
        assert (out / made).exists(), made
    assert json.loads((out / "exit_status.json").read_text())["status"] == "finished"
    signalled, restarted = stamped(text, "SIGUSR1: asking"), stamped(text, rf"job {job.id} start 1 ")
    print(f"preempt -> requeue -> restart: {(restarted[0] - signalled[0]).total_seconds():.0f} s")


@pytest.mark.slow
@pytest.mark.waits_for_background_jobs
def test_two_tasks_as_two_nodes_rendezvous_and_resume_after_the_batch_shell_is_signalled(real_jobs):
    job = real_jobs.two_nodes
    state = job.wait_until_done(timeout=300)
    text = job.log.read_text()
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), text[-4000:]
    assert int(state["Restarts"]) == 1
    assert "node 0 of 2" in text and "node 1 of 2" in text and "node 1: SIGUSR1, passing it to the training processes" in text
    records = logged(run_folder(job))
    assert [r["step"] for r in records] == list(range(1, TWO_NODE_STEPS + 1))
    assert {r["world_size"] for r in records} == {2}
