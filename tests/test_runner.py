"""train/run/runner.py: the entry every trainer shares; flags are answered before heavy imports."""
import contextlib
import json
import subprocess
import sys

import psutil
import pytest

from tests.conftest import ROOT
from train.run.outcome import EXIT_STATUS_FILE, RunEnd, RunStatus, write_exit_status

HEAVY = ("datasets", "pyarrow", "wandb", "torchmetrics", "torch_fidelity", "accelerate.accelerator", "matplotlib")


# Each recipe's --help (its own modules), and the shared runner's two early errors through one recipe:
# every process is a fresh interpreter, and six of them side by side took 15-25 s of the suite.
EARLY_ENDS = [("train/wgangp.py", ["--help"], 0, "usage:"), ("train/lightweight_gan.py", ["--help"], 0, "usage:"),
              ("train/wgangp.py", ["--batch-size", "0"], 2, "--batch-size 0: must be at least 1"),
              ("train/lightweight_gan.py", ["--data", "nowhere"], 2, "--data nowhere: no such folder")]


@pytest.fixture(scope="module")
def early_ends() -> dict[tuple[str, str], subprocess.Popen]:
    """Every script and argv of EARLY_ENDS in a fresh interpreter (this one has imported the heavy
    libraries by now), whose atexit functions still run when the runner ends the process without the
    interpreter's teardown (runner.exit_promptly). All started at once: each waits on its imports
    on one core, so side by side they take the time of about half of them."""
    program = """
import atexit, runpy, sys
heavy = {heavy!r}
atexit.register(lambda: print("heavy:" + ",".join(m for m in heavy if m in sys.modules), file=sys.stderr))
sys.argv = ["{script}", *{argv!r}]
runpy.run_path("{script}", run_name="__main__")
"""
    started = {(script, " ".join(argv)): subprocess.Popen([sys.executable, "-c", program.format(heavy=HEAVY, script=script, argv=argv)],
                                                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for script, argv, _, _ in EARLY_ENDS}
    yield started
    for process in started.values():
        process.kill()
        process.communicate()


@pytest.mark.parametrize("script, argv, code, line", EARLY_ENDS)
def test_help_and_a_bad_flag_import_none_of_the_heavy_libraries(early_ends, script, argv, code, line):
    process = early_ends[script, " ".join(argv)]
    stdout, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert result.returncode == code, result.stderr
    assert line in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == "heavy:"


@pytest.mark.parametrize("status, code", [(RunStatus.FINISHED, 0), (RunStatus.COLLAPSED, 3), (RunStatus.STOPPED, 75)])
def test_each_ending_has_its_exit_code_in_exit_status_json(tmp_path, status, code):
    write_exit_status(tmp_path, RunEnd(status, 12, "why"))
    saved = json.loads((tmp_path / EXIT_STATUS_FILE).read_text())
    assert saved == {"exit_code": code, "status": status.value, "step": 12, "reason": "why"}
    assert [p.name for p in tmp_path.iterdir()] == [EXIT_STATUS_FILE]


RANK = """
import os, sys, time
os.environ["TORCHELASTIC_RUN_ID"] = "test"
from train.run.runner import end_with_launcher
end_with_launcher(poll_s=0.2)
print(os.getpid(), flush=True)
time.sleep(120)
"""
LAUNCHER = """
import subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=sys.stdout, start_new_session=True)
time.sleep(120)
"""


def test_a_rank_started_by_torchrun_ends_when_its_launcher_is_killed():
    # torchrun starts each rank in a session of its own: a SIGKILL of the launcher reaches no rank.
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, RANK], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        rank = psutil.Process(int(launcher.stdout.readline()))
        assert rank.is_running()
        launcher.kill()
        launcher.wait(timeout=10)
        rank.wait(timeout=10)  # gone within the poll, not after its sleep (psutil.TimeoutExpired otherwise)
    finally:
        launcher.kill()
        with contextlib.suppress(psutil.NoSuchProcess, NameError):
            rank.kill()
