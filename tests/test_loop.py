"""train/run/loop.py (and its phases): non-finite gradients never reach the weights; the run rolls back, then stops."""
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from tests.conftest import ROOT, TORCHRUN_CPU_ENV, run_script, torchrun_cpu, train_in_process
from tests.fixtures import write_parquet_shards
from train.common.failpoints import Failpoints
from train.data import DataOptions, open_stream, parse_data_spec, to_model_input
from train.gan.objectives import WGANGP
from train.report.metrics import read_metrics
from train.run.networks import build_networks
from train.run.phases import Phases
from train.run.poison import with_failpoints
from train.run.runner import main
from train.run.updates import DataParallelUpdates
from train.wgangp import WGANGPConfig, make_objective

CRITIC_STEPS = 2


def toy_setup(scaler: torch.amp.GradScaler | None = None, failpoints: str = ""):
    """The toy step, and its networks and optimizers; `failpoints` as $FACEGAN_FAILPOINTS would set them."""
    accelerator = Accelerator(cpu=True)
    accelerator.scaler = scaler  # the fp16 path's GradScaler, which torch runs on the CPU (Accelerate will not)
    config = WGANGPConfig(model="mlp", latent_dim=2, mlp_hidden=16, data="toy:8gaussians")
    generator, critic = build_networks(config)
    g_opt, d_opt = (torch.optim.Adam(m.parameters(), lr=1e-3) for m in (generator, critic))
    prepared = accelerator.prepare(generator, critic, g_opt, d_opt)
    stream = open_stream(DataOptions(parse_data_spec("toy:8gaussians"), 64), batch_size=16, seed=0, rank=0, world_size=1)
    rng = torch.Generator().manual_seed(0)
    objective = WGANGP(gp_weight=0.1, scaler=scaler, rng=rng)

    steps = [0]
    updates = with_failpoints(DataParallelUpdates(accelerator, 1), Failpoints.parse(failpoints), lambda: steps[0],
                              grads_in_engine=False)
    phases = Phases(*prepared, objective, updates, lambda: to_model_input(next(stream), "cpu"),
                    lambda: torch.randn(16, 2, generator=rng), CRITIC_STEPS, 1, lambda stats: None)

    def step():
        steps[0] += 1
        return phases.step()

    return step, prepared


def snapshot(prepared) -> list[torch.Tensor]:
    generator, critic, g_opt, d_opt = prepared
    tensors = [p.detach().clone() for m in (generator, critic) for p in m.parameters()]
    for optimizer in (g_opt, d_opt):
        tensors += [v.clone() for s in optimizer.state_dict()["state"].values() for v in s.values() if torch.is_tensor(v)]
    return tensors


@pytest.mark.parametrize("failpoint", ["nonfinite_loss=2", "nonfinite_grad=2"])
def test_a_non_finite_loss_or_gradient_leaves_weights_and_optimizer_state_untouched(failpoint):
    step, prepared = toy_setup(failpoints=failpoint)
    assert step().skipped_updates == 0  # the optimizers now hold state
    before = snapshot(prepared)
    result = step()
    assert (result.skipped_updates, result.generator_updated) == (CRITIC_STEPS + 1, False)
    after = snapshot(prepared)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.isfinite(t).all() for t in after)
    healthy = step()
    assert (healthy.skipped_updates, healthy.generator_updated) == (0, True)
    assert not all(torch.equal(a, b) for a, b in zip(after, snapshot(prepared)))


def test_under_the_fp16_grad_scaler_a_non_finite_step_is_skipped_and_the_scale_lowered():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    step, prepared = toy_setup(scaler, failpoints="nonfinite_loss=2")
    step()
    before, scale = snapshot(prepared), scaler.get_scale()
    result = step()
    assert (result.skipped_updates, result.generator_updated) == (CRITIC_STEPS + 1, False)
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(prepared)))
    assert scaler.get_scale() < scale  # halved once per skipped update
    assert step().generator_updated and all(torch.isfinite(t).all() for t in snapshot(prepared))


def finite_checkpoint(path: Path) -> bool:
    tensors = [t for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors") for t in load_file(path / name).values()]
    optimizers = [torch.load(path / name, weights_only=True) for name in ("optimizer.bin", "optimizer_1.bin")]
    tensors += [v for o in optimizers for s in o["state"].values() for v in s.values() if torch.is_tensor(v)]
    return all(torch.isfinite(t).all() for t in tensors)


DEBUG = ["--debug", "--log-every", "1", "--sample-every", "100", "--ckpt-every", "5", "--nonfinite-patience", "3"]


def test_a_short_burst_is_skipped_and_counted_and_the_run_finishes(tmp_path, monkeypatch, capsys):
    # In-process: the failpoints are read when the run starts, not when train.common.failpoints is imported.
    out = tmp_path / "run"
    monkeypatch.setenv("FACEGAN_FAILPOINTS", "nonfinite_loss=7:2")
    code = main(WGANGPConfig, make_objective, "test", [*DEBUG, "--max-steps", "12", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    records = {r["step"]: r for r in read_metrics(out / "metrics.jsonl")}
    assert records[6]["skipped_steps"] == 0 and records[8]["skipped_steps"] == 2 * 6  # 5 critic + 1 generator each
    assert records[12]["skipped_steps"] == 12 and "rolled back" not in captured.out
    assert finite_checkpoint(out / "checkpoints" / "step_000012")


def test_a_lasting_divergence_rolls_back_then_stops_with_a_checkpoint_and_exit_code_4(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("FACEGAN_FAILPOINTS", "nonfinite_loss=7:100")
    result = train_in_process("train/wgangp.py", *DEBUG, "--max-steps", "40", "--max-rollbacks", "2", "--out", str(out))
    assert result.returncode == 4, result.stderr[-3000:]
    # steps 7-9 non-finite: back to step 5; 10-12: back to step 10; 13-15: no rollbacks left
    assert result.stdout.count("rolled back to") == 2
    assert "rolled back to step_000005 (rollback 1 of at most 2)" in result.stdout
    assert "rolled back to step_000010 (rollback 2 of at most 2)" in result.stdout
    status = json.loads((out / "exit_status.json").read_text())
    assert (status["status"], status["step"], status["exit_code"]) == ("diverged", 15, 4)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 16))  # each step once
    assert finite_checkpoint(out / "checkpoints" / "step_000015")
    state = torch.load(out / "checkpoints" / "step_000015" / "train_state_0.pt", weights_only=True)
    assert (state["rollbacks"], state["nonfinite_streak"]) == (2, 3)


@pytest.mark.slow
def test_two_processes_take_the_same_decisions(tmp_path):
    out = tmp_path / "run"
    env = {"FACEGAN_FAILPOINTS": "nonfinite_loss=6:100", **TORCHRUN_CPU_ENV}
    result = run_script("train/wgangp.py", *DEBUG, "--max-steps", "20", "--max-rollbacks", "1", "--out", str(out),
                        env=env, launcher=torchrun_cpu(2))
    status = json.loads((out / "exit_status.json").read_text())
    assert (status["status"], status["step"]) == ("diverged", 11), result.stderr[-3000:]  # 6-8: back to 5; 9-11: stop
    states = [torch.load(out / "checkpoints" / "step_000011" / f"train_state_{r}.pt", weights_only=True) for r in (0, 1)]
    assert [(s["rollbacks"], s["nonfinite_streak"], s["skipped"]) for s in states] == [(1, 3, 36)] * 2
    assert finite_checkpoint(out / "checkpoints" / "step_000011")


def start_run(out: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "train/wgangp.py"), *args, "--out", str(out)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_steps(process: subprocess.Popen, out: Path, steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ((out / "metrics.jsonl").exists() and len(read_metrics(out / "metrics.jsonl")) >= steps):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate(timeout=10)
        time.sleep(0.2)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"no exit within {timeout:.0f} s: a hang")
    return process.returncode, stderr


def break_shard(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def kill_a_decoding_worker(process: subprocess.Popen) -> None:
    workers = psutil.Process(process.pid).children()
    assert workers, "no decoding worker to kill"
    workers[0].kill()


DATA_FAULTS = {
    "shard deleted": lambda shard, process: shard.unlink(),
    "shard truncated": lambda shard, process: break_shard(shard),
    "worker killed": lambda shard, process: kill_a_decoding_worker(process),
}


def run_with_data_fault(folder: Path, fault) -> tuple[int, str, Path, str]:
    """A run with 2 decoding workers whose data fails after its third step: its exit code, stderr,
    --out and data glob."""
    # 2 shards of 20 rows: each step reads 40 rows (8 x 5 critic steps), a whole pass.
    glob = write_parquet_shards(folder / "shards", rows=40, shards=2)
    out = folder / "run"
    process = start_run(out, "--debug", "--data", f"parquet:{glob}", "--workers", "2", "--max-steps", "500",
                        "--log-every", "1", "--ckpt-every", "1000", "--sample-every", "1000")
    try:
        wait_for_steps(process, out, 3)
        fault(folder / "shards" / "train-00001.parquet", process)
        code, stderr = finish(process)
    finally:
        process.kill()
    return code, stderr, out, glob


@pytest.fixture(scope="module")
def data_faults(tmp_path_factory) -> Iterator[dict[str, Future]]:
    """The three runs side by side: each is mostly its rank waiting on its workers, so on 2 cores
    the three take little more than the longest. Started by the first test that asks."""
    with ThreadPoolExecutor(len(DATA_FAULTS)) as pool:
        yield {name: pool.submit(run_with_data_fault, tmp_path_factory.mktemp("data_fault"), fault) for name, fault in DATA_FAULTS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("fault", DATA_FAULTS)
def test_data_failing_mid_run_stops_with_a_checkpoint_and_one_line_never_a_hang(data_faults, fault):
    code, stderr, out, glob = data_faults[fault].result()
    assert code == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --data parquet:{glob}") and "stopped with a checkpoint at step" in last, stderr[-3000:]
    step = int(re.search(r"checkpoint at step (\d+)", last).group(1))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, step + 1))
    assert finite_checkpoint(out / "checkpoints" / f"step_{step:06d}")
    assert json.loads((out / "exit_status.json").read_text())["status"] == "data_failed"


TOY_RUN = ["--debug", "--data", "toy:8gaussians", "--max-steps", "4", "--ckpt-every", "2", "--log-every", "1"]


def test_a_full_disk_at_the_first_checkpoint_advises_starting_again_not_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGAN_FAILPOINTS", "checkpoint_enospc=2")  # the first checkpoint cannot be written
    out = tmp_path / "run"
    result = train_in_process("train/wgangp.py", *TOY_RUN, "--out", str(out))
    assert result.returncode == 75, result.stderr[-3000:]
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "there is no earlier checkpoint" in error and "--resume" not in error.replace("without --resume", "")
    assert error.endswith("then start the run again (without --resume: there is no checkpoint to continue from)")
    last = result.stdout.strip().splitlines()[-1]
    assert last == "exit code 75: stopped before the first checkpoint; start again with the same command (or --resume auto)"
    status = json.loads((out / "exit_status.json").read_text())
    assert (status["status"], status["step"]) == ("stopped", 0)  # no checkpoint: a start goes on from step 0


def test_after_a_failed_checkpoint_exit_status_names_the_step_of_the_checkpoint_a_resume_continues_from(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGAN_FAILPOINTS", "checkpoint_enospc=4")  # step 2's is written, step 4's is not
    out = tmp_path / "run"
    result = train_in_process("train/wgangp.py", *TOY_RUN, "--out", str(out))
    assert result.returncode == 75, result.stderr[-3000:]
    status = json.loads((out / "exit_status.json").read_text())
    assert (status["status"], status["step"]) == ("stopped", 2) and "step_000004" in status["reason"]
    assert "step_000002 and the checkpoints before it are untouched" in status["reason"]
    assert result.stdout.strip().splitlines()[-1].endswith("continue with --resume (or --resume auto)")


def test_out_of_memory_in_the_first_steps_is_one_line_naming_the_batch_flags(tmp_path, capsys, monkeypatch):
    # The failpoint raises torch.OutOfMemoryError inside step 2's update, as a CUDA allocator would.
    from train.run.lock import RunLock

    out = tmp_path / "run"
    monkeypatch.setenv("FACEGAN_FAILPOINTS", "out_of_memory=2")
    code = main(WGANGPConfig, make_objective, "test", [*DEBUG, "--max-steps", "4", "--grad-accum", "2", "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert lines[-1].startswith("error: out of memory in step 2") and len([line for line in lines if "error" in line.lower()]) == 1
    assert "--batch-size 8 --grad-accum 2" in lines[-1] and "--batch-size 4 --grad-accum 4" in lines[-1]
    assert not (out / "run.lock").exists() and not (out / "checkpoints").exists()
    with RunLock(out):  # released: the next start may take it
        pass
