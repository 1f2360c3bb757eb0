import dataclasses
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from train.common.stop_signals import STOP_SIGNALS

# OpenMP threads spin while another process holds a core: a trainer beside a busy process (another
# xdist worker, a second rank, a decoding worker) then runs several times slower (the README's
# "Threads" figures). Each worker takes its share of the cores, as do the processes its tests start;
# set before torch is imported, which reads it once.
# One process (no xdist) keeps torch's defaults; torchrun and debug_launch give one thread per rank.
# (OMP_WAIT_POLICY=PASSIVE was tried for the whole suite: the in-process runs' small ops got about
# 35% slower, measured on the 8-Gaussian run, 33 s against 25.)
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // WORKERS)))

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    import torch  # here, after the thread count above: torch reads it once, at import

    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    # The Ctrl-C tests send SIGINT to processes they start. A suite run as a script's background job
    # (`pytest &` without job control) inherits SIGINT ignored, and those processes would keep
    # ignoring it, as the entry scripts mean to (train/common/stop_signals.py, `handled`): a handler
    # here makes theirs the default again, as from a terminal (exec resets a handler, not SIG_IGN).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Background jobs (the real Slurm jobs: a minute, most of it spent waiting for Slurm's
    time-limit check) are submitted by the first test and judged by the last ones, so that their
    waiting overlaps the rest of the suite instead of adding to it. One xdist worker runs every
    test of a file that shares a machine-wide resource: the real Slurm (munged's socket and key are
    the machine's own)."""
    for item in items:
        if item.path.name == "test_slurm.py":
            item.add_marker(pytest.mark.xdist_group("slurm"))
    first = [item for item in items if item.get_closest_marker("submits_background_jobs")]
    last = [item for item in items if item.get_closest_marker("waits_for_background_jobs")]
    rest = [item for item in items if item not in first and item not in last]
    if first:  # beside the jobs, the files whose processes mostly wait or import (one thread each)
        rest.sort(key=lambda item: item.path.name not in BESIDE_BACKGROUND_JOBS)  # stable: their order kept
    items[:] = first + rest + last


# The jobs run at nice 19, but a process computing on several OpenMP threads still stalls at each
# barrier where one of its threads waits for a core: beside the jobs (CI runs of 2026-12-03), the
# in-process ADA and Stacked MNIST tests took twice as long. These files' processes mostly wait
# (signals, timeouts, locks) or import, on one thread.
BESIDE_BACKGROUND_JOBS = ("test_runner.py", "test_startup.py", "test_stop.py", "test_stop_signals.py", "test_peers.py",
                          "test_lock.py", "test_durability.py")


# CPU ranks started by torchrun itself, for the tests whose subject is not the launcher: `accelerate
# launch --cpu --num_processes N` hands over to the same torchrun (train/run/multi_cpu.py), two
# interpreter starts later (12.8 s against 9.2 s for a 12-step 2-rank run on 2 cores). The launch
# itself is checked through Accelerate in two_rank_run, the Slurm jobs and the notebooks.
TORCHRUN_CPU_ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def torchrun_cpu(processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]


def run_script(script: str, *args: str, timeout: float = 300, env: dict | None = None, launcher: list[str] | None = None):
    """Run a project script as a user would, from the repository root; returns the CompletedProcess."""
    command = [*(launcher or [sys.executable]), str(ROOT / script), *args]
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def in_process(script: str, args: tuple[str, ...], call) -> subprocess.CompletedProcess:
    """`call()`'s exit code and what it printed (warnings included), as `python script args...`
    would have reported them, with this process's signal handlers and Accelerate state kept apart."""
    import contextlib
    import io
    import warnings

    from accelerate.state import AcceleratorState

    import torch

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1, signal.SIGTERM)}
    threads = torch.get_num_threads()  # a run sets its own (train/run/threads.py); later tests keep this process's
    stdout, stderr = io.StringIO(), io.StringIO()
    AcceleratorState._reset_state(reset_partial_state=True)  # each run chooses its own precision, as a new process would
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: print(
                warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)
            try:
                code = call()
            except SystemExit as exit:  # argparse's own refusals
                code = exit.code if isinstance(exit.code, int) else 1
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess([script, *args], code, stdout.getvalue(), stderr.getvalue())


def train_in_process(script: str, *args: str) -> subprocess.CompletedProcess:
    """A recipe script run in this process, for the runs whose subject is not a signal, an exit code
    of the process, a lock or a hang; it saves the interpreter's start and the imports (seconds a run)."""
    import importlib

    from train.run.finished import RECIPE_CONFIGS
    from train.run.runner import main

    module_name, config_name = RECIPE_CONFIGS[script].split(":")
    recipe = importlib.import_module(module_name)
    return in_process(script, args, lambda: main(getattr(recipe, config_name), recipe.make_objective, recipe.__doc__, list(args)))


def tool_in_process(script: str, *args: str) -> subprocess.CompletedProcess:
    """generate.py or evaluate.py run in this process."""
    import importlib

    return in_process(script, args, lambda: importlib.import_module(TOOLS[script]).main(list(args)))


def completed(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The result of a script that must have succeeded; its stderr's tail otherwise."""
    assert result.returncode == 0, result.stderr[-4000:]
    return result


# The command-line tools over a finished run, run in-process as the recipes are.
TOOLS = {"train/generate.py": "train.generate", "train/evaluate.py": "train.evaluate"}


def run_in_process_where_possible(script: str, *args: str, timeout: float = 300, env: dict | None = None,
                                  launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """A recipe or tool in this process; a launcher or an environment of its own makes the run's
    subject the process, so those run as `run_script` does."""
    from train.run.finished import RECIPE_CONFIGS

    if launcher or env or (script not in RECIPE_CONFIGS and script not in TOOLS):
        return run_script(script, *args, timeout=timeout, env=env, launcher=launcher)
    if script in TOOLS:
        return tool_in_process(script, *args)
    return train_in_process(script, *args)


@pytest.fixture
def run():
    """Run a project script: in-process where the subject allows (run_in_process_where_possible)."""
    return run_in_process_where_possible


@pytest.fixture
def own_handlers():
    """GracefulStop (and so an in-process run) leaves its signal handlers in place; this pytest
    process gets its own back."""
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def finished(tmp_path_factory, script: str, *args: str) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    completed(train_in_process(script, *args, "--out", str(out)))
    return out


# Finished runs that several test files read, made once per test session. Tests only read them.
@pytest.fixture(scope="session")
def wgangp_run(tmp_path_factory) -> Path:
    """`train/wgangp.py --debug`: 40 steps of a tiny DCGAN on synthetic images, checkpoints at 20 and 40."""
    return finished(tmp_path_factory, "train/wgangp.py", "--debug")


@pytest.fixture(scope="session")
def lightweight_run(tmp_path_factory) -> Path:
    """`train/lightweight_gan.py --debug`: 40 steps of a tiny lightweight pair, checkpoints at 20 and 40."""
    return finished(tmp_path_factory, "train/lightweight_gan.py", "--debug")


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory) -> Path:
    """A cache holding Stacked MNIST's trained digit classifier (trained once per session, ~12 s on
    one core); XDG_CACHE_HOME=classifier_cache.parents[1] makes it the default cache."""
    from train.report.stacked_mnist import load_classifier

    cache = tmp_path_factory.mktemp("xdg-cache") / "facegan" / "stacked-mnist"  # default_cache_dir()'s layout
    load_classifier(cache)
    return cache


# Its flags: 32 px keeps a 2-rank step cheap; every step logged and a checkpoint every 3 steps, so
# that faults at random moments land around checkpoints.
TWO_RANK_FLAGS = ["--debug", "--resolution", "32", "--max-steps", "12", "--log-every", "1", "--ckpt-every", "3", "--sample-every", "6"]


@dataclass(frozen=True)
class LaunchedRun:
    out: Path
    output: str  # the launcher's and both ranks' stdout and stderr
    seconds: float
    torchrun_seconds: float  # from Accelerate's hand-over to torchrun until the end: a run torchrun starts itself takes about as long


@pytest.fixture(scope="session")
def two_rank_run(tmp_path_factory) -> LaunchedRun:
    """`accelerate launch --cpu --num_processes 2 train/wgangp.py` with TWO_RANK_FLAGS: 12 steps on
    2 gloo ranks. test_wgangp checks the launch; test_reliability judges faulted runs against it
    (started by torchrun itself: their random moments fall within `torchrun_seconds`) and continues a
    copy of it on other numbers of processes."""
    import time

    from tests.faults import kill_group, start

    out = tmp_path_factory.mktemp("two_rank") / "run"
    began, handed_over, lines = time.monotonic(), None, []
    process = start(out, 2, None, flags=TWO_RANK_FLAGS, through_accelerate=True)
    try:
        for line in process.stdout:  # until every process holding the pipe has ended
            lines.append(line)
            if handed_over is None and "CPU processes on this machine" in line:
                handed_over = time.monotonic()
        code = process.wait(timeout=60)
    finally:
        kill_group(process)
    ended, output = time.monotonic(), "".join(lines)
    assert code == 0 and handed_over is not None, output[-3000:]
    return LaunchedRun(out, output, ended - began, ended - handed_over)


def _debug_launcher(target: str, args: tuple, num_processes: int, timeout: float) -> subprocess.CompletedProcess:
    """`module:function(*args)` on `num_processes` gloo CPU processes (accelerate's debug_launcher)
    from a fresh interpreter: the launcher forks, and a fork of a process that has already run
    OpenMP-parallel torch ops (as pytest's has, by then) can deadlock. A launch past `timeout` is
    killed with the ranks it forked and reported as exit code -9."""
    module, function = target.split(":")
    code = (
        "import sys; from accelerate import debug_launcher; "
        f"from {module} import {function}; "
        f"debug_launcher({function}, args={args!r}, num_processes={num_processes})"
    )
    # One OpenMP thread per rank, as torchrun gives: with OMP_NUM_THREADS unset, Accelerate gives each
    # debug-launched rank every physical core (it counts a local world of 1), so two ranks spin twice
    # the cores; measured on 2 cores: 39 s against 4 s for the ResNet DDP check of test_objectives.py.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the ranks too: one blocked in a collective waits 30 min
        stdout, stderr = process.communicate()
        stderr += f"\n[killed after {timeout:.0f} s]"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def debug_launch(target: str, *args, num_processes: int = 2, timeout: float = 240) -> None:
    """Run `module:function(*args)` on `num_processes` gloo CPU processes; it must succeed on every rank."""
    result = _debug_launcher(target, args, num_processes, timeout)
    assert result.returncode == 0, result.stderr[-4000:]


@dataclasses.dataclass(frozen=True)
class LaunchedCases:
    """What each rank reported for each case of one `debug_launch_cases`: None for a pass, else the
    traceback; a case missing from a rank's report was not reached (the launch's stderr says why)."""

    reports: tuple[dict[str, str | None], ...]
    launch: subprocess.CompletedProcess

    def assert_passed(self, case: str) -> None:
        failures = [f"rank {rank}, case {case!r}:\n{report[case][-3000:]}"
                    for rank, report in enumerate(self.reports) if report.get(case)]
        missing = [str(rank) for rank, report in enumerate(self.reports) if case not in report]
        if missing:
            failures.append(f"case {case!r} not reached on rank {', '.join(missing)}; the launch exited with"
                            f" {self.launch.returncode}:\n{self.launch.stderr[-3000:]}")
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)


def debug_launch_cases(cases: dict[str, tuple[str, tuple]], folder: Path, num_processes: int = 2,
                       timeout: float = 600, peer_timeout: float = 60) -> LaunchedCases:
    """Run every case, `id: ("module:function", args)`, on ONE set of `num_processes` gloo processes,
    one case after another: an interpreter start, the imports and a rendezvous once, not once per
    case (seconds each: the first DDP wrap alone imports torch.distributed.tensor, 2 s a rank).
    A case passes by returning; an exception fails it alone. Each case builds and ends its own
    Accelerator: under debug_launcher `end_training` keeps the process group for the next.

    After each case the ranks wait (at most `peer_timeout` s) for each other through a FileStore in
    `folder`, not gloo: a case that fails on one rank between two collectives leaves the other blocked
    in one, and the cases after it would then pair the wrong collectives; the ranks stop there, each
    having reported what it ran, and the cases not reached fail as such."""
    launch = _debug_launcher("tests.conftest:run_cases", (cases, str(folder), peer_timeout), num_processes, timeout)
    reports = [folder / f"rank_{rank}.json" for rank in range(num_processes)]
    return LaunchedCases(tuple(json.loads(r.read_text()) if r.exists() else {} for r in reports), launch)


def run_cases(cases: dict[str, tuple[str, tuple]], folder: str, peer_timeout: float) -> None:
    """debug_launch_cases' worker, on each rank: runs the cases, writing rank_<r>.json after each."""
    import datetime
    import importlib
    import traceback

    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    store = dist.FileStore(str(Path(folder) / "finished_cases"), world)
    report: dict[str, str | None] = {}
    for case, (target, args) in cases.items():
        module, function = target.split(":")
        try:
            getattr(importlib.import_module(module), function)(*args)
            report[case] = None
        except Exception:
            report[case] = traceback.format_exc()
        (Path(folder) / f"rank_{rank}.json").write_text(json.dumps(report, indent=1))
        store.set(f"{case}/{rank}", "failed" if report[case] else "passed")
        try:
            store.wait([f"{case}/{peer}" for peer in range(world)], datetime.timedelta(seconds=peer_timeout))
        except RuntimeError:  # FileStore's timeout: a peer still inside this case, our collectives out of step
            print(f"rank {rank}: a rank did not finish case {case!r} within {peer_timeout:.0f} s; stopping",
                  file=sys.stderr)
            store.set("stop", case)
            return
        if store.check(["stop"]):  # the peer that stopped has left; our next collective would fail
            return


def assert_resumed_like_whole(whole: Path, split: Path, keys: tuple[str, ...], step: int = 6) -> None:
    """A run interrupted at step 3 and resumed to `step` logged, drew and averaged exactly what the
    uninterrupted one did: losses from the first log line after the resume (windows of 2 steps),
    the final fixed-noise grid byte for byte, the EMA weights bit for bit."""
    import torch
    from safetensors.torch import load_file

    from train.report.metrics import read_metrics

    expected, got = read_metrics(whole / "metrics.jsonl"), read_metrics(split / "metrics.jsonl")
    assert [r["step"] for r in got] == [2, 3, 4, 6]  # 3: the interrupted run's last line
    for line, resumed in zip(expected[1:], got[2:]):
        assert {k: resumed[k] for k in keys} == {k: line[k] for k in keys}
    final = f"samples/step_{step:06d}.png"
    assert (split / final).read_bytes() == (whole / final).read_bytes()
    ema = [load_file(run / "checkpoints" / f"step_{step:06d}" / "ema.safetensors") for run in (whole, split)]
    assert ema[0].keys() == ema[1].keys() and all(torch.equal(ema[0][k], ema[1][k]) for k in ema[0])
