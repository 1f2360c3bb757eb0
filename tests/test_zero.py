"""train/run/zero.py: DeepSpeed ZeRO-1/2 for the generator/critic pair equals the DDP path on
2 gloo processes (real DeepSpeed, no mocks), and every refused configuration says why in one line.

The multi-process checks run under torchrun (not accelerate's debug_launcher, which sets
ACCELERATE_USE_CPU, the very setting that makes Accelerate drop DeepSpeed), as cases of one launch
per session (`zero_cases`), each case recording its own outcome on each rank. A step case runs
ZeRO-1 and ZeRO-2, each with 1 and 2 micro-batches, resetting Accelerate's state in between. On each
rank the reference is the plain DDP step (torch's DistributedDataParallel on the same gloo group, this
rank's half of the global batch, `no_sync` and loss / micro-batches as the loop does), and the
engines must give its full gradients (deepspeed.utils.safe_get_full_grad) and, after an Adam
step, its weights.
"""
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.background import Launch, start_in_background
from tests.conftest import torchrun_cpu
from train.run.zero import ZeroOptions, ZeroRefused, accelerator_options, check_zero

GLOBAL_BATCH = 8
LR = 1e-3
# fp32: the same sums in another order (DDP's bucketed all-reduce vs DeepSpeed's reduce-scatter);
# measured: 0 at one micro-batch, 3e-8 at two.
FP32_TOLERANCE = 1e-6
# bf16 (autocast, fp32 weights): the same, because both paths run each forward call under its own
# autocast (Accelerate's prepare, zero.ZeroUpdates.network) on the same half-batch and reduce fp32
# gradients (lower_precision_safe_modules is empty); measured: 0, and 4e-8 at two micro-batches.
# What it does catch: one autocast around the whole critic loss (as a first version of this test
# had) shares the weight casts between the two critic calls and sums their gradients in bf16,
# 1.6e-3 away, i.e. bf16's unit roundoff (2**-8); a real divergence is larger still.
BF16_TOLERANCE = 1e-6
ROOT = Path(__file__).resolve().parents[1]


# --- refusals, in-process ------------------------------------------------------------------

def test_zero_0_is_refused_because_it_is_ddp():
    with pytest.raises(ZeroRefused, match=r"^--deepspeed 0: .*DDP is the same thing"):
        check_zero(0, "no", use_cpu=True, environ={})


def test_zero_3_is_refused_because_partitioned_weights_break_ema_sampling_fid_and_checkpoints():
    with pytest.raises(ZeroRefused, match=r"^--deepspeed 3: .*EMA, sampling, FID and checkpoints; use --deepspeed 2"):
        check_zero(3, "no", use_cpu=False, environ={})


def test_zero_3_from_an_accelerate_config_is_refused_too():
    environ = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    with pytest.raises(ZeroRefused, match=r"^--deepspeed 3: "):
        check_zero(None, "no", use_cpu=False, environ=environ)


@pytest.mark.parametrize("variable", ["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"])
@pytest.mark.parametrize("device", ["cpu", "nvme"])
def test_offload_from_an_accelerate_config_is_refused(variable, device):
    environ = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2", variable: device}
    with pytest.raises(ZeroRefused, match=rf"^--deepspeed 2: offload_\w+_device: {device} .*offload is not supported"):
        check_zero(None, "no", use_cpu=False, environ=environ)


def test_offload_in_a_deepspeed_json_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}')
    with pytest.raises(ZeroRefused, match=r"offload_optimizer in .*ds.json: CPU/NVMe offload is not supported"):
        check_zero(2, "no", use_cpu=False, environ={"ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)})


def test_gradient_clipping_auto_is_refused_because_accelerate_fills_in_1():
    environ = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1", "ACCELERATE_GRADIENT_CLIPPING": "auto"}
    with pytest.raises(ZeroRefused, match=r"^--deepspeed 1: gradient_clipping: auto .*1\.0.*gradient_clipping: 0\.0"):
        check_zero(None, "no", use_cpu=False, environ=environ)


def test_deepspeed_with_accelerate_use_cpu_is_refused_because_the_plugins_are_dropped():
    with pytest.raises(ZeroRefused, match=r"^--deepspeed 2: ACCELERATE_USE_CPU .*drop the DeepSpeed plugins"):
        check_zero(2, "no", use_cpu=True, environ={"ACCELERATE_USE_CPU": "yes"})


def test_fp16_on_a_cpu_is_refused():
    with pytest.raises(ZeroRefused, match=r"^--deepspeed 1 --mixed-precision fp16: .*needs a GPU; use bf16"):
        check_zero(1, "fp16", use_cpu=True, environ={})


def test_every_refusal_is_one_line():
    for stage in (0, 3):
        with pytest.raises(ZeroRefused) as refused:
            check_zero(stage, "no", use_cpu=True, environ={})
        assert "\n" not in str(refused.value)


@pytest.mark.parametrize("stage,precision", [(1, "no"), (2, "bf16"), (1, "fp16")])
def test_sound_configurations_pass(stage, precision):
    check_zero(stage, precision, use_cpu=False, environ={})
    check_zero(None, precision, use_cpu=True, environ={})  # no DeepSpeed at all


def test_every_deepspeed_setting_is_written_and_none_is_auto():
    config = ZeroOptions(stage=2, micro_batch=4, grad_accum=2, precision="bf16").deepspeed_config()
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 0.0 and config["zero_optimization"]["stage"] == 2
    assert config["bf16"] == {"enabled": False} and config["torch_autocast"]["enabled"]

    def values(node):
        for value in node.values():
            yield from values(value) if isinstance(value, dict) else [value]

    assert "auto" not in list(values(config))


def test_fp16_is_torch_autocast_with_fp32_weights():
    config = ZeroOptions(stage=1, micro_batch=2, precision="fp16").deepspeed_config()
    assert config["fp16"] == {"enabled": False}
    assert config["torch_autocast"]["dtype"] == "float16" and config["torch_autocast"]["enabled"]


# --- 2 gloo processes ----------------------------------------------------------------------

def _torchrun_command(script: str, *args: str, processes: int = 2) -> tuple[list[str], dict[str, str]]:
    """`script args...` on `processes` CPU processes, without an outer launcher's ACCELERATE_* settings.
    DS_ACCELERATOR=cpu: DeepSpeed's CPU accelerator without the warning."""
    command = [*torchrun_cpu(processes), str(ROOT / script), *args]
    env = {name: value for name, value in os.environ.items() if not name.startswith("ACCELERATE_")}
    env |= {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # The cases import tests.conftest: the repository root on the ranks' path, as pytest's rootdir
    # is on this process's (the editable install maps only the product's packages).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return command, env


def _torchrun(script: str, *args: str, processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    command, env = _torchrun_command(script, *args, processes=processes)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


# The cases (about 20 s on 2 cores) and, on a fresh machine, the op's compilation (45-80 s), with
# room for a busy machine.
CASES_TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class CaseOutcome:
    stdout: str  # what the case printed: rank 0's, then rank 1's
    out: Path  # the case's own folder, where its runs are


class ZeroCases:
    """The outcomes the session's launch of CASES left, one case at a time: a case that failed, or
    that the launch never finished, fails the test that reads it, with the reason, and only it."""

    def __init__(self, folder: Path, launch: subprocess.CompletedProcess | subprocess.TimeoutExpired):
        self.folder, self.launch = folder, launch

    def __getitem__(self, name: str) -> CaseOutcome:
        recorded = [self.folder / f"{name}.rank{rank}.json" for rank in range(2)]
        outcomes = [json.loads(path.read_text()) if path.exists() else None for path in recorded]
        stdout = "".join(outcome["stdout"] for outcome in outcomes if outcome)
        failures = [f"rank {rank}: {outcome['error'] if outcome else 'no outcome: the launch ended first'}"
                    for rank, outcome in enumerate(outcomes) if outcome is None or outcome["error"]]
        if None in outcomes:
            failures.append(f"the launch {self._ended()}; its stderr ends:\n{self._stderr()[-6000:]}")
        if failures:
            pytest.fail(f"case {name} failed\n" + "\n".join(failures) + f"\nits output:\n{stdout[-4000:]}", pytrace=False)
        return CaseOutcome(stdout, self.folder / name)

    def _ended(self) -> str:
        if isinstance(self.launch, subprocess.TimeoutExpired):
            return f"timed out after {self.launch.timeout:.0f} s"
        return f"ended with exit code {self.launch.returncode}"

    def _stderr(self) -> str:
        stderr = self.launch.stderr or ""  # a TimeoutExpired's is bytes
        return stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr


def _started_in_the_background(folder: Path, script: str, *args: str) -> Launch:
    command, env = _torchrun_command(script, *args)
    return start_in_background(command, folder, env, ROOT)


@pytest.fixture(scope="session")
def zero_launch(tmp_path_factory) -> Iterator[Launch]:
    """Every 2-process case (CASES) in one torchrun launch: the launch (2 interpreters, torch,
    DeepSpeed and Accelerate imported, a rendezvous) costs more than most cases. Started by the
    suite's first tests (submits_background_jobs) in the background, so that it runs in the CPU
    time the tests before this file leave idle."""
    folder = tmp_path_factory.mktemp("zero_cases")
    launch = _started_in_the_background(folder, "tests/test_zero.py", "cases", str(folder))
    yield launch
    launch.end()


@pytest.fixture(scope="session")
def zero_cases(zero_launch) -> ZeroCases:
    """The cases' outcomes once the launch has ended. Its first `deepspeed.init_distributed`
    compiles the deepspeed_shm_comm op where it is not cached yet (about 45-80 s on 2 cores, cached
    in ~/.cache/torch_extensions), paid here, once, so no test times out on it."""
    return ZeroCases(zero_launch.folder, zero_launch.ended(CASES_TIMEOUT_S))


@pytest.mark.slow
@pytest.mark.submits_background_jobs
def test_the_deepspeed_launches_start_first_at_background_priority(zero_launch, lightweight_zero_run):
    """Their processes yield the CPU to the rest of the suite: their session's autogroup (where the
    kernel has them) and their own niceness at 19."""
    for launch in (zero_launch, lightweight_zero_run):
        launch.assert_in_background()


@pytest.fixture(scope="session")
def deepspeed_op_compiled(zero_cases) -> None:
    """For the tests that launch on their own: the cases' launch compiled the op before them."""


@pytest.mark.slow
def test_wgangp_step_under_zero_1_and_2_gives_the_ddp_gradients_and_weights(zero_cases):
    out = zero_cases["wgangp_matches_ddp"].stdout  # fp32 and bf16
    assert out.count("OK") == 2 * 2 * 4, out  # 2 ranks x (fp32, bf16) x (ZeRO-1, ZeRO-2) x (1, 2 micro-batches)


@pytest.mark.slow
def test_fastgan_step_with_r1_under_zero_1_and_2_gives_the_ddp_gradients_and_weights(zero_cases):
    out = zero_cases["fastgan_matches_ddp"].stdout
    assert out.count("OK") == 2 * 2 * 4, out


@pytest.mark.slow
def test_accelerate_sees_two_cpu_processes_under_deepspeed(zero_cases):
    """gloo named as the backend (zero.accelerator_options), cpu=False: 2 processes, DeepSpeed, the CPU."""
    out = zero_cases["world_size"].stdout
    assert sorted(_worlds(out)) == ["DEEPSPEED:0/2:cpu:zero2", "DEEPSPEED:1/2:cpu:zero2"], out


@pytest.mark.slow
def test_the_shipped_deepspeed_config_launches_two_cpu_processes(deepspeed_op_compiled):
    """`accelerate launch --config_file launch/accelerate/deepspeed_zero1.yaml`: its stage and
    clipping reach the plugins, and check_zero accepts what it sets."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "launch/accelerate/deepspeed_zero1.yaml"), "--num_processes", "2", "--mixed_precision", "no",
               str(ROOT / "tests" / "test_zero.py"), "world_size"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(_worlds(result.stdout)) == ["DEEPSPEED:0/2:cpu:zero1", "DEEPSPEED:1/2:cpu:zero1"], result.stdout


def _worlds(stdout: str) -> list[str]:
    """Each rank's report; two ranks writing to one pipe may run their lines together."""
    return re.findall(r"DEEPSPEED:\d+/\d+:\w+:zero\d", stdout)


@pytest.mark.parametrize("stage", [1, 2])
def test_accelerate_reads_the_shipped_deepspeed_configs(stage):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(ROOT / f"launch/accelerate/deepspeed_zero{stage}.yaml"))
    assert config.distributed_type == DistributedType.DEEPSPEED and not config.use_cpu
    assert config.deepspeed_config == {
        "zero_stage": stage, "gradient_clipping": 0.0, "offload_optimizer_device": "none",
        "offload_param_device": "none", "zero3_init_flag": False,
    }


# --- the trainers: refusals in-process, before anything is written -----------------------------

def _trainer(name: str):
    """A trainer's (config class, objective factory), as its script hands them to the runner."""
    from train import dcgan, lightweight_gan, wgangp

    return {"wgangp": (wgangp.WGANGPConfig, wgangp.make_objective),
            "lightweight_gan": (lightweight_gan.LightweightGANConfig, lightweight_gan.make_objective),
            "dcgan": (dcgan.DCGANConfig, dcgan.make_objective)}[name]


@pytest.fixture
def not_launched(monkeypatch):
    """No ACCELERATE_* variable of an outer launcher: each test sets the ones it means."""
    for name in [name for name in os.environ if name.startswith("ACCELERATE_")]:
        monkeypatch.delenv(name)


LAUNCHED_ZERO_2 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
REFUSED = [
    ("wgangp", ["--deepspeed", "0"], {}, "--deepspeed 0: ZeRO-0 partitions nothing and is plain data parallelism"),
    ("wgangp", ["--deepspeed", "3"], {}, "--deepspeed 3: ZeRO-3 partitions the weights"),
    ("lightweight_gan", ["--deepspeed", "3"], {}, "--deepspeed 3: ZeRO-3 partitions the weights"),
    ("lightweight_gan", ["--deepspeed", "1", "--mixed-precision", "fp16"], {}, "--deepspeed 1 --mixed-precision fp16: DeepSpeed's fp16 needs a GPU"),
    ("wgangp", ["--deepspeed", "2"], {"ACCELERATE_USE_CPU": "true"}, "--deepspeed 2: ACCELERATE_USE_CPU (accelerate launch --cpu)"),
    ("wgangp", [], {**LAUNCHED_ZERO_2, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "--deepspeed 3: ZeRO-3 partitions the weights"),
    ("wgangp", [], {**LAUNCHED_ZERO_2, "ACCELERATE_GRADIENT_CLIPPING": "auto"}, "--deepspeed 2: gradient_clipping: auto"),
    ("dcgan", [], {**LAUNCHED_ZERO_2, "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"},
     "--deepspeed 2: offload_optimizer_device: cpu in the accelerate config"),
    ("wgangp", ["--gradient-clipping", "1"], {}, "--gradient-clipping 1.0: a value of 0 or more, and only with --deepspeed"),
    ("dcgan", ["--deepspeed", "2", "--no-sync-bn", "--unrolled-steps", "2"], {},
     "--deepspeed 2 --unrolled-steps 2: the unrolled discriminator is not supported under DeepSpeed"),
]


def _refusal(trainer: str, argv: list[str], env: dict, out: Path, monkeypatch, capsys, cpu: bool = True) -> str:
    """main's one `error:` line for a refused start; exit code 2 (`env` on top of no launcher's: not_launched)."""
    from train.run.runner import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main(*_trainer(trainer), "test", ["--debug", *(["--cpu"] if cpu else []), *argv, "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("trainer,argv,env,fragment", REFUSED, ids=[" ".join([t, *a, *e.values()]) for t, a, e, _ in REFUSED])
def test_a_refused_deepspeed_start_says_why_in_one_line_exits_2_and_writes_nothing(not_launched, trainer, argv, env, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # --cpu where the refusal is about the CPU (fp16) or comes first anyway; a GPU machine refuses --deepspeed --cpu.
    line = _refusal(trainer, argv, env, tmp_path / "run", monkeypatch, capsys, cpu="--unrolled-steps" not in argv)
    assert fragment in line
    assert list(tmp_path.iterdir()) == []


def test_sync_bn_on_a_gpu_is_refused_under_deepspeed(not_launched, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the check reads no more of the GPU than that
    line = _refusal("wgangp", ["--deepspeed", "2"], {}, tmp_path / "run", monkeypatch, capsys, cpu=False)
    assert "--deepspeed 2 --sync-bn: SyncBatchNorm under DeepSpeed engines is untested here; add --no-sync-bn" in line
    assert not (tmp_path / "run").exists()


def test_deepspeed_with_cpu_on_a_gpu_machine_is_refused(not_launched, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    line = _refusal("lightweight_gan", ["--deepspeed", "1"], {}, tmp_path / "run", monkeypatch, capsys)
    assert "--deepspeed 1 --cpu: Accelerate drops DeepSpeed" in line and "CUDA_VISIBLE_DEVICES=" in line
    assert not (tmp_path / "run").exists()


def _made_run(out: Path, deepspeed: int | None) -> dict:
    """A run's folder as a trainer leaves it (config.json, a checkpoint), without training."""
    from train.run.config import save_config
    from train.wgangp import WGANGPConfig

    config = WGANGPConfig(**{**WGANGPConfig.debug_preset, "out": str(out), "deepspeed": deepspeed, "cpu": True, "debug": True})
    (out / "checkpoints" / "step_000003").mkdir(parents=True)
    save_config(config, out)
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(out.rglob("*"))}


@pytest.mark.parametrize("made,argv,env,fragment", [
    (None, ["--deepspeed", "2"], {}, "--deepspeed 2: the run in {out} was trained with DDP (no DeepSpeed)"),
    (None, [], LAUNCHED_ZERO_2, "--deepspeed 2: the run in {out} was trained with DDP (no DeepSpeed)"),
    (2, ["--deepspeed", "1"], {}, "--deepspeed 1: the run in {out} was trained with DeepSpeed ZeRO-2"),
], ids=["ddp run, --deepspeed 2", "ddp run, a DeepSpeed accelerate config", "zero-2 run, --deepspeed 1"])
def test_a_checkpoint_resumed_under_another_deepspeed_setting_is_refused(not_launched, made, argv, env, fragment, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    before = _made_run(out, made)
    line = _refusal("wgangp", ["--resume", *argv], env, out, monkeypatch, capsys)
    assert fragment.format(out=out) in line and "resume it as it was made" in line
    assert {p: p.read_bytes() if p.is_file() else None for p in sorted(out.rglob("*"))} == before


def test_a_deepspeed_run_resumes_as_deepspeed_without_the_flag(not_launched, tmp_path):
    from train.run.config import load_config
    from train.wgangp import WGANGPConfig

    _made_run(tmp_path / "run", 2)
    config = load_config(WGANGPConfig, ["--resume", "--out", str(tmp_path / "run")], "test")
    assert config.deepspeed == 2 and config.gradient_clipping == 0.0


def test_an_accelerate_deepspeed_config_sets_the_stage_and_clipping(not_launched, tmp_path, monkeypatch):
    from train.run.config import load_config
    from train.wgangp import WGANGPConfig

    for name, value in {**LAUNCHED_ZERO_2, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1", "ACCELERATE_GRADIENT_CLIPPING": "0.5"}.items():
        monkeypatch.setenv(name, value)
    config = load_config(WGANGPConfig, ["--debug", "--cpu", "--out", str(tmp_path / "run")], "test")
    assert (config.deepspeed, config.gradient_clipping) == (1, 0.5)
    config = load_config(WGANGPConfig, ["--debug", "--cpu", "--deepspeed", "2", "--out", str(tmp_path / "run")], "test")
    assert (config.deepspeed, config.gradient_clipping) == (2, 0.5)  # the flag wins the stage


# --- the trainers end to end on 2 processes ----------------------------------------------------

def _trained_and_resumed(script: str, stage: int, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """Run in a case, on its 2 ranks: a run stopped at step 3, the whole run to step 6 and the stopped
    one resumed, under ZeRO-`stage`, one after another in this process; what the resume printed.
    The whole run comes between the halves, so that state a fresh process would start anew (and
    a resume forgot to restore) is not what the stopped half left."""
    from tests.conftest import completed, train_in_process

    common = ["--debug", "--deepspeed", str(stage), "--ckpt-every", "3", "--log-every", "2", "--sample-every", "100", *flags]
    whole, split = out / "whole", out / "split"
    completed(train_in_process(script, *common, "--max-steps", "3", "--out", str(split)))
    completed(train_in_process(script, *common, "--max-steps", "6", "--out", str(whole)))
    return completed(train_in_process(script, "--resume", "--max-steps", "6", "--out", str(split)))


def wgangp_trained_and_resumed(out: Path) -> None:
    # The toy MLPs: the same engines, checkpoints and resume, without DeepSpeed's slow CPU conv steps.
    sys.stdout.write(_trained_and_resumed("train/wgangp.py", 2, out, "--data", "toy:8gaussians").stdout)


def wgangp_with_non_finite_updates(out: Path) -> None:
    """Run in a case: the gradient failpoint (a non-finite loss under DeepSpeed) at steps 2 and 3."""
    from tests.conftest import completed, train_in_process

    # Read where the run starts; the case's environment is restored after it.
    os.environ["FACEGAN_FAILPOINTS"] = "nonfinite_grad=2:2"
    completed(train_in_process("train/wgangp.py", "--debug", "--data", "toy:8gaussians", "--deepspeed", "2", "--max-steps",
                               "4", "--log-every", "1", "--sample-every", "100", "--out", str(out / "run")))


def _assert_deepspeed_run(run: Path, stage: int) -> None:
    from train.report.metrics import read_metrics

    records = read_metrics(run / "metrics.jsonl")
    assert {r["world_size"] for r in records} == {2} and records[-1]["skipped_steps"] == 0
    assert json.loads((run / "config.json").read_text())["deepspeed"] == stage
    checkpoint = run / "checkpoints" / "step_000006"
    for engine in ("pytorch_model", "pytorch_model_1"):  # the critic's engine, the generator's
        names = {p.name for p in (checkpoint / engine).iterdir()}
        assert {"mp_rank_00_model_states.pt", *(f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1))} <= names


@pytest.mark.slow
def test_wgangp_under_zero_2_on_two_processes_logs_world_size_2_and_resumes_exactly(zero_cases):
    from tests.conftest import assert_resumed_like_whole

    case = zero_cases["wgangp_trained_and_resumed"]
    assert "resumed from step 3" in case.stdout
    whole, split = case.out / "whole", case.out / "split"
    _assert_deepspeed_run(whole, 2)
    assert_resumed_like_whole(whole, split, ("d_loss", "g_loss", "gp", "wdist"))


@pytest.fixture(scope="session")
def lightweight_zero_run(tmp_path_factory) -> Iterator[Launch]:
    """The lightweight GAN to step 6 under ZeRO-1 on 2 processes (its exact resume is the same code
    as the WGAN-GP case's, which proves it), launched as a user launches it: the one DeepSpeed
    trainer here that ends as a process, with its exit code and end_training's release of the
    process group (the cases' runs share theirs). Started with the cases' launch, in the background."""
    folder = tmp_path_factory.mktemp("lightweight_zero")
    launch = _started_in_the_background(folder, "train/lightweight_gan.py", "--debug", "--deepspeed", "1", "--ckpt-every", "3",
                                        "--log-every", "2", "--sample-every", "100", "--max-steps", "6", "--out", str(folder / "whole"))
    yield launch
    launch.end()


@pytest.mark.slow
def test_lightweight_gan_under_zero_1_on_two_processes_logs_world_size_2_and_refuses_one_process(lightweight_zero_run):
    from tests.conftest import completed

    ended = lightweight_zero_run.ended(CASES_TIMEOUT_S)
    assert not isinstance(ended, subprocess.TimeoutExpired), ended.stderr[-3000:]
    completed(ended)
    whole = lightweight_zero_run.folder / "whole"
    _assert_deepspeed_run(whole, 1)
    # ZeRO's optimizer states are split over the 2 ranks that saved them: 1 process is refused in one
    # line, and the run's folder left as it was, its exit_status.json and run.lock included.
    before = sorted(p.relative_to(whole) for p in whole.rglob("*"))
    refused = _torchrun("train/lightweight_gan.py", "--resume", "--max-steps", "9", "--out", str(whole), processes=1)
    assert "exitcode: 2" in refused.stderr, refused.stderr[-3000:]  # the rank's; torchrun itself answers 1
    assert "error: --resume: " in refused.stderr and "saved by 2 DeepSpeed processes" in refused.stderr
    assert sorted(p.relative_to(whole) for p in whole.rglob("*")) == before


@pytest.mark.slow
def test_under_fp16_the_engines_scale_comes_down_on_each_overflow_and_updates_are_then_made(zero_cases):
    """DeepSpeed 0.19 returns from an overflowed step before its GradScaler sees the overflow; without
    ZeroUpdates lowering the scale, it stayed at 2^16 and every update was skipped (60 of 60 in 12
    steps on an H200). Both ranks, ZeRO-1 and ZeRO-2: skipped updates until the scale fits, each
    halving it, then updates made; a forced overflow later is skipped and halves it once more."""
    _said_on_every_rank_and_stage(zero_cases["fp16_overflow_backs_off"].stdout, "made ")


@pytest.mark.slow
def test_under_fp16_a_checkpoint_keeps_the_engines_scales_and_a_resume_restores_them(zero_cases):
    """Neither Accelerate's save_state nor DeepSpeed's keeps the engines' GradScaler: without it, a
    resumed fp16 run started again at 2^16 and skipped updates until the scale came down."""
    _said_on_every_rank_and_stage(zero_cases["fp16_overflow_backs_off"].stdout, "the scales come back from the checkpoint")


def _said_on_every_rank_and_stage(out: str, what: str) -> None:
    for stage in (1, 2):
        for rank in (0, 1):
            assert f"OK rank {rank} ZeRO-{stage} fp16: {what}" in out, out


@pytest.mark.slow
def test_non_finite_updates_are_left_out_by_the_engines_on_every_rank(zero_cases):
    """The gradient failpoint (a non-finite loss under DeepSpeed) at steps 2 and 3: their 5 critic and
    1 generator updates each are skipped, and the run goes on with finite weights."""
    from train.report.metrics import read_metrics

    records = read_metrics(zero_cases["wgangp_with_non_finite_updates"].out / "run" / "metrics.jsonl")
    assert [r["skipped_steps"] for r in records] == [0, 6, 12, 12]
    assert all(math.isfinite(records[-1][k]) for k in ("d_loss", "g_loss", "gp"))


# --- the workers (run under torchrun) --------------------------------------------------------

def cases(folder: str, *names: str) -> None:
    """The cases `names` (all of CASES without any), one after another in this process; each rank
    leaves `<case>.rank<r>.json` in `folder`: what the case printed and, had it failed, why."""
    import deepspeed
    import torch.distributed as dist

    from train.run.runner import end_with_launcher

    end_with_launcher()  # a timed-out launch's ranks end with their torchrun
    # Accelerate's own launchers' setting: the process group is the launcher's, and end_training
    # leaves it to the trainer runs after it (DeepSpeed keeps its groups from the first; a group
    # made again is not registered there).
    os.environ["FORK_LAUNCHED"] = "1"
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world, folder = dist.get_rank(), dist.get_world_size(), Path(folder)
    for name in names or CASES:
        (folder / name).mkdir(exist_ok=True)
        printed, error = io.StringIO(), None
        with _case_apart(), contextlib.redirect_stdout(printed):
            try:
                CASES[name](folder / name)
            except Exception:  # whatever it raised fails its own test, not the cases after it
                error = traceback.format_exc()
        recorded = folder / f"{name}.rank{rank}.json"
        recorded.with_suffix(".part").write_text(json.dumps({"stdout": printed.getvalue(), "error": error}))
        recorded.with_suffix(".part").rename(recorded)  # whole, for the ranks that look for it
        if error is not None and not _every_rank_recorded(folder, name, world):
            sys.stdout.flush()
            os._exit(1)  # another rank waits in a collective this one left: torchrun ends it; later cases go unrecorded


@contextlib.contextmanager
def _case_apart():
    """Undoes what a case leaves in the process for the next one: the environment (Accelerate sets
    ACCELERATE_USE_DEEPSPEED, a case its failpoints) and Accelerate's state."""
    from accelerate.state import AcceleratorState, GradientState

    environ = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _every_rank_recorded(folder: Path, name: str, world: int, deadline_s: float = 60) -> bool:
    """Whether every rank records case `name` within `deadline_s` of this one. A case's last
    collective pairs the ranks, so after a failure that came after it the others follow at once;
    after one in the middle they wait in a collective this rank never joins."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if all((folder / f"{name}.rank{rank}.json").exists() for rank in range(world)):
            return True
        time.sleep(0.1)
    return False


def _start(options: ZeroOptions):
    from accelerate import Accelerator

    return Accelerator(**accelerator_options(options, use_cpu=True))


def _finish(accelerator) -> None:
    from accelerate.state import AcceleratorState, GradientState

    accelerator.free_memory()
    AcceleratorState._reset_state()  # keeps the process group: the next configuration joins it
    GradientState._reset_state()


def world_size() -> None:
    from train.run.zero import zero_from_environment

    stage, clipping = zero_from_environment()  # from `accelerate launch --config_file ...`, else --deepspeed 2
    check_zero(stage or 2, "bf16", use_cpu=True)
    accelerator = _start(ZeroOptions(stage=stage or 2, micro_batch=1, gradient_clipping=clipping))
    state = accelerator.state
    stage = state.deepspeed_plugin.zero_stage
    report = f"{state.distributed_type.value}:{accelerator.process_index}/{accelerator.num_processes}:{accelerator.device.type}:zero{stage}"
    sys.stdout.write(report + "\n")  # one write: the line and its newline together
    _finish(accelerator)


def _fix_injected_noise(generator: nn.Module) -> None:
    from models.lightweight import NoiseInjection

    # Per-rank noise cannot equal another rank's; a fixed pattern keeps the weights in the graph.
    for module in generator.modules():
        if isinstance(module, NoiseInjection):
            module.forward = lambda x, m=module: x + m.weight * torch.linspace(-1, 1, x.shape[-1]).view(1, 1, 1, -1)


def _pair(kind: str) -> tuple[nn.Module, nn.Module]:
    from models import build_models

    torch.manual_seed(0)
    if kind == "mlp":
        generator, critic = build_models("mlp", resolution=64, latent_dim=8, mlp_hidden=64)
    else:
        generator, critic = build_models(
            "lightweight", resolution=64, latent_dim=8, channel_base=512, channel_max=16,
            critic_norm="none", attn_resolutions=(8,),
        )
        _fix_injected_noise(generator)
    generator.eval()  # per-rank BatchNorm statistics cannot be compared; fixed ones can (as in test_objectives)
    return generator, critic


def _global_batch(kind: str, objective) -> dict:
    torch.manual_seed(1)
    cpu = torch.device("cpu")
    if kind == "mlp":
        batch = {"real": torch.randn(GLOBAL_BATCH, 2), "alpha": torch.rand(GLOBAL_BATCH)}
    else:
        coarse = torch.rand(GLOBAL_BATCH, 3, 8, 8) * 2 - 1
        batch = {"real": F.interpolate(coarse, size=64, mode="bilinear", align_corners=False)}
        batch |= {f"critic_{k}": v for k, v in objective.draw_critic(GLOBAL_BATCH, 64, cpu).items()}
        batch |= {f"generator_{k}": v for k, v in objective.draw_generator(GLOBAL_BATCH, 64, cpu).items()}
    batch["z_critic"], batch["z_generator"] = torch.randn(GLOBAL_BATCH, 8), torch.randn(GLOBAL_BATCH, 8)
    return batch


def _objective(kind: str):
    from train.gan.objectives import WGANGP, FastGANHinge

    if kind == "mlp":
        return WGANGP(gp_weight=10.0)
    return FastGANHinge(gp_weight=1.0, gp_every=1, rng=torch.Generator().manual_seed(7))


def _critic_loss(objective, critic, micro: dict, fake: torch.Tensor):
    if "alpha" in micro:
        return objective.critic_loss(critic, micro["real"], fake, micro["alpha"])[0]
    draw = {k.removeprefix("critic_"): v for k, v in micro.items() if k.startswith("critic_")}
    loss, stats = objective.critic_loss(critic, micro["real"], fake, draw)
    assert "gp" in stats
    return loss


def _generator_loss(objective, critic, micro: dict, fake: torch.Tensor):
    if "alpha" in micro:
        return objective.generator_loss(critic, fake)[0]
    draw = {k.removeprefix("generator_"): v for k, v in micro.items() if k.startswith("generator_")}
    return objective.generator_loss(critic, fake, draw)[0]


def _micro_batches(batch: dict, rank: int, world: int, micro_batches: int) -> list[dict]:
    local = {k: v.chunk(world)[rank] for k, v in batch.items()}
    return [{k: v.chunk(micro_batches)[i] for k, v in local.items()} for i in range(micro_batches)]


def _ddp_reference(kind: str, precision: str, micro: list[dict]):
    """The loop's DDP step: gradients (per network, before the update) and the weights after Adam."""
    from torch.nn.parallel import DistributedDataParallel

    generator, critic = _pair(kind)
    objective = _objective(kind)
    generator, critic = DistributedDataParallel(generator), DistributedDataParallel(critic)
    if precision == "bf16":  # as Accelerate's prepare does: each forward call under its own autocast
        for model in (generator, critic):
            model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    g_opt, d_opt = torch.optim.Adam(generator.parameters(), LR), torch.optim.Adam(critic.parameters(), LR)
    n = len(micro)
    for i, batch in enumerate(micro):
        with torch.no_grad():
            fake = generator(batch["z_critic"])
        with critic.no_sync() if i < n - 1 else torch.enable_grad():
            loss = _critic_loss(objective, critic, batch, fake)
        (loss / n).backward()
    critic_grads = [p.grad.clone() for p in critic.parameters()]
    d_opt.step()
    d_opt.zero_grad(set_to_none=True)
    critic.requires_grad_(False)
    for i, batch in enumerate(micro):
        with generator.no_sync() if i < n - 1 else torch.enable_grad():
            loss = _generator_loss(objective, critic, batch, generator(batch["z_generator"]))
        (loss / n).backward()
    generator_grads = [p.grad.clone() for p in generator.parameters()]
    g_opt.step()
    return (critic_grads, [p.detach().clone() for p in critic.module.parameters()],
            generator_grads, [p.detach().clone() for p in generator.module.parameters()])


def _zero_step(kind: str, options: ZeroOptions, micro: list[dict]):
    """The same step through train.run.zero.ZeroUpdates, as the loop's phases take it."""
    from deepspeed.utils import safe_get_full_grad

    from train.run import zero

    accelerator = _start(options)
    generator, critic = _pair(kind)
    objective = _objective(kind)
    g_opt, d_opt = torch.optim.Adam(generator.parameters(), LR), torch.optim.Adam(critic.parameters(), LR)
    generator, critic, g_opt, d_opt = zero.prepare_pair(accelerator, generator, critic, g_opt, d_opt)
    updates = zero.ZeroUpdates(grad_accum=len(micro))
    run_generator, run_critic = updates.network(generator), updates.network(critic)
    for i, batch in enumerate(micro):
        with torch.no_grad():
            fake = run_generator(batch["z_critic"])
        updates.backward(critic, _critic_loss(objective, run_critic, batch, fake), micro=i)
    critic_grads = [safe_get_full_grad(p).clone() for p in critic.module.parameters()]
    assert updates.update(d_opt, critic)
    critic.requires_grad_(False)
    for i, batch in enumerate(micro):
        loss = _generator_loss(objective, run_critic, batch, run_generator(batch["z_generator"]))
        updates.backward(generator, loss, micro=i)
    generator_grads = [safe_get_full_grad(p).clone() for p in generator.module.parameters()]
    assert updates.update(g_opt, generator)
    result = (critic_grads, [p.detach().clone() for p in critic.module.parameters()],
              generator_grads, [p.detach().clone() for p in generator.module.parameters()])
    del generator, critic, g_opt, d_opt
    _finish(accelerator)
    return result


def fp16_overflow_backs_off(out: Path) -> None:
    """Run in a case: twelve critic updates of the MLP pair under fp16 autocast (torch runs it on the
    CPU, below check_zero's refusal, which is about speed), update 9 with a loss 10^6 times its size.
    The scale starts at 2^16, where this critic's gradients overflow in fp16, and must come down one
    halving per skipped update until updates are made; the forced overflow halves it once more."""
    import torch.distributed as dist

    from train.run import zero

    rank, world = dist.get_rank(), dist.get_world_size()
    batch = _global_batch("mlp", _objective("mlp"))
    for stage in (1, 2):
        micro = _micro_batches(batch, rank, world, 1)[0]
        accelerator = _start(ZeroOptions(stage=stage, micro_batch=len(micro["real"]), precision="fp16"))
        generator, critic = _pair("mlp")
        objective = _objective("mlp")
        g_opt, d_opt = torch.optim.Adam(generator.parameters(), LR), torch.optim.Adam(critic.parameters(), LR)
        generator, critic, g_opt, d_opt = zero.prepare_pair(accelerator, generator, critic, g_opt, d_opt)
        scaler, updates = zero.gradient_scaler(critic), zero.ZeroUpdates(grad_accum=1)
        run_generator, run_critic = updates.network(generator), updates.network(critic)
        made, scales = [], [scaler.get_scale()]
        for update in range(12):
            before = [p.detach().clone() for p in critic.module.parameters()]
            with torch.no_grad():
                fake = run_generator(micro["z_critic"])
            loss = _critic_loss(objective, run_critic, micro, fake) * (1e6 if update == 9 else 1.0)
            updates.backward(critic, loss, micro=0)
            made.append(updates.update(d_opt, critic))
            scales.append(scaler.get_scale())
            moved = any(not torch.equal(b, p) for b, p in zip(before, critic.module.parameters()))
            assert moved == made[-1], f"update {update}: reported made={made[-1]}, weights moved={moved}"
            assert all(torch.isfinite(p).all() for p in critic.module.parameters())
        flags = "".join("T" if m else "F" for m in made)
        skipped = flags[:9].count("F")
        assert 1 <= skipped <= 8 and flags[:9] == "F" * skipped + "T" * (9 - skipped) and flags[9:] == "FTT", flags
        assert all(after == (before / 2 if not m else before) for before, after, m in zip(scales, scales[1:], made)), scales
        print(f"OK rank {rank} ZeRO-{stage} fp16: made {flags}, scale {scales[0]:.0f} -> {scales[-1]:.0f}", flush=True)
        _scales_survive_a_checkpoint(accelerator, critic, generator, out / f"zero{stage}")
        print(f"OK rank {rank} ZeRO-{stage} fp16: the scales come back from the checkpoint", flush=True)
        del generator, critic, g_opt, d_opt
        _finish(accelerator)


class _StepOnly:
    """A train state with a step and a world size only (what save/load_checkpoint read of it)."""

    def __init__(self, step: int, world: int):
        self.step, self.world = step, world

    def state_dict(self) -> dict:
        return {"step": self.step, "world_size": self.world}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


def _scales_survive_a_checkpoint(accelerator, critic, generator, out: Path) -> None:
    """save_checkpoint keeps both engines' GradScaler states (neither Accelerate nor DeepSpeed does);
    load_checkpoint puts them back, after scales changed since."""
    from train.run import zero
    from train.run.checkpoint import ZERO_SCALERS_FILE, CheckpointLayout, checkpoint_damage, load_checkpoint, save_checkpoint

    scalers = [zero.gradient_scaler(critic), zero.gradient_scaler(generator)]
    saved = [scaler.state_dict() for scaler in scalers]
    path = save_checkpoint(accelerator, out, _StepOnly(12, accelerator.num_processes), {}, keep=2)
    layout = CheckpointLayout.of(accelerator)
    assert ZERO_SCALERS_FILE in layout.shared_files() and checkpoint_damage(path, layout) is None
    for scaler in scalers:
        zero._back_off(scaler)
    load_checkpoint(accelerator, path, _StepOnly(0, accelerator.num_processes))
    restored = [zero.gradient_scaler(critic).state_dict(), zero.gradient_scaler(generator).state_dict()]
    assert restored == saved, (restored, saved)


def _relative(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """Largest difference, relative to the tensor's largest value when that exceeds 1 (test_objectives' measure)."""
    return max(((g.float() - e.float()).abs().max() / e.float().abs().max().clamp(min=1.0)).item() for g, e in zip(got, expected))


def _matches_ddp(kind: str, precisions: tuple[str, ...]) -> None:
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    batch = _global_batch(kind, _objective(kind))
    differ = []  # reported after every configuration: a rank that stopped at the first would leave the other in a collective
    for precision, micro_batches in [(p, m) for p in precisions for m in (1, 2)]:
        tolerance = BF16_TOLERANCE if precision == "bf16" else FP32_TOLERANCE
        micro = _micro_batches(batch, rank, world, micro_batches)
        expected = _ddp_reference(kind, precision, micro)
        for stage in (1, 2):
            options = ZeroOptions(stage=stage, micro_batch=len(micro[0]["real"]), grad_accum=micro_batches, precision=precision)
            got = _zero_step(kind, options, micro)
            names = ("critic grads", "critic weights", "generator grads", "generator weights")
            differences = {name: _relative(g, e) for name, g, e in zip(names, got, expected)}
            configuration = f"rank {rank} ZeRO-{stage} x{micro_batches} {precision}"
            differ += [f"{configuration}: {name} differ by {value:.2e}" for name, value in differences.items() if value > tolerance]
            if all(value <= tolerance for value in differences.values()):
                worst = ", ".join(f"{name} {value:.1e}" for name, value in differences.items())
                print(f"OK rank {rank} ZeRO-{stage} micro-batches {micro_batches} {precision}: {worst}", flush=True)
    assert not differ, "\n".join(differ)


# Each case runs on every rank of the session's launch (`cases`), given a folder of its own.
CASES: dict[str, Callable[[Path], None]] = {
    "world_size": lambda out: world_size(),
    "wgangp_matches_ddp": lambda out: _matches_ddp("mlp", ("no", "bf16")),
    "fastgan_matches_ddp": lambda out: _matches_ddp("lightweight", ("no", "bf16")),
    "wgangp_trained_and_resumed": wgangp_trained_and_resumed,
    "wgangp_with_non_finite_updates": wgangp_with_non_finite_updates,
    "fp16_overflow_backs_off": fp16_overflow_backs_off,
}


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
