"""The GPU acceptance check: one command, about 9 minutes on one H100/H200.

    python bench/gpu_check.py                      # on a GPU: every part, then the report
    python bench/gpu_check.py --cpu-smoke          # every part at tiny sizes on the CPU, under 2 minutes
    python bench/gpu_check.py --parts speed        # some parts only

Parts, in order, each with its own time box (a part that runs out leaves its remaining rows
"not measured", and the next part starts on time):
1. environment: GPU, memory, driver, CUDA, cuDNN, torch, accelerate.
2. correctness: tests/test_gpu.py (fp16 and bf16 runs of both trainers, the fp16 penalty against
   fp32, bf16 kept only where native), then a forced fp16 overflow through the training step: the
   step is skipped and counted, the scale lowered, and the steps after it update normally.
3. speed: per trainer, resolution and precision, real images per second through the critic, the
   step split into its critic and generator phases, peak memory, and model FLOP utilisation (the
   FLOPs of one step, counted by torch.utils.flop_counter.FlopCounterMode, per second, over the
   peak of a large bf16 matmul measured on the same device in the same run).
4. options, each on and off in the same run: channels-last, fused Adam, TF32, the penalty's
   convolutions as PyTorch differentiates them twice against train.gan.conv_grad's rewrite,
   torch.compile of the generator and of the critic (or why not).
5. lucidrains: bench/lightweight_vs_lucidrains.py side by side at 256 and 1024 px, and the largest
   batch at 1024 px (needs `pip install lightweight-gan==1.2.1`; without it, ours alone).
6. deepspeed: the WGAN-GP trainer's own runs under DDP and under ZeRO-1 and ZeRO-2 (one process,
   torchrun), bf16 and fp16 on a GPU (fp32 in the smoke run): img/s and peak memory from each run's
   metrics.jsonl (needs deepspeed installed; without it, the reason).
7. data: bench/decode_device.py (--decode-device cuda's decode_jpeg batches against one CPU core's
   decode_image loop, at 512 and 1024 px), bench/data_throughput.py's prepared table (prepared
   shards read into pinned batches, 64 and 256 px), bench/data_wait.py: data_wait_frac of a 64-px
   DCGAN fed from prepared shards, debug-sized and at its own sizes, and last bench/data_throughput.py's
   decode table at 1024 px (1 and 4 workers decoding into reused slots, pinned, against the loop).

Writes report.json and report.md to --report (default bench/reports/<device>-<date>/) and prints
the Markdown.
"""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import accelerate
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.measure import CUDA, DEVICE, PeakMemory, release, significant, synchronize
from bench.trainer_step import trainer_phases
from train.common.atomic import atomic_write_text
from train.gan import conv_grad
from train.lightweight_gan import LightweightGANConfig
from train.lightweight_gan import make_objective as lightweight_objective
from train.run.config import resolve_config
from train.run.phases import Phases
from train.run.precision import resolve_mixed_precision
from train.wgangp import WGANGPConfig
from train.wgangp import make_objective as wgangp_objective

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("environment", "correctness", "speed", "options", "lucidrains", "deepspeed", "data")
# Seconds per part on a GPU (about 9 minutes in all) and in the CPU smoke run (under 2 minutes).
BUDGETS = {
    "gpu": {"environment": 15, "correctness": 140, "speed": 115, "options": 55, "lucidrains": 50, "deepspeed": 60, "data": 100},
    "smoke": {"environment": 5, "correctness": 20, "speed": 20, "options": 20, "lucidrains": 15, "deepspeed": 40, "data": 25},
}
TRAINERS = {"wgangp": (WGANGPConfig, wgangp_objective), "lightweight": (LightweightGANConfig, lightweight_objective)}


@dataclass(frozen=True)
class Row:
    """One measured configuration: a trainer at a resolution and precision, with its options."""

    trainer: str
    resolution: int
    precision: str
    batch: int
    options: tuple[tuple[str, Any], ...] = ()  # config flags on top of the trainer's defaults
    compile: tuple[str, ...] = ()  # "generator" and/or "critic"
    penalty_rewrite: bool | None = None  # train.gan.conv_grad forced on or off; None: its own choice (on a GPU only)

    def label(self) -> str:
        shown = [f"{k}={v}" for k, v in self.options] + [f"compile {m}" for m in self.compile]
        if self.penalty_rewrite is not None:
            shown.append("penalty convolutions " + ("rewritten" if self.penalty_rewrite else "PyTorch's"))
        return ", ".join(shown) or "defaults"


@dataclass(frozen=True)
class Sizes:
    """What a run measures: the GPU's real sizes, or the smoke run's tiny ones."""

    rows: tuple[Row, ...]
    option_base: Row
    channel_base: int | None  # None: each trainer's own widths
    critic_steps: int | None
    warmup: int
    timed: int
    matmul: int
    lucidrains_args: tuple[str, ...]
    compile_backend: str
    data_commands: tuple[tuple[str, ...], ...]  # bench scripts and their arguments for the data part


def gpu_sizes() -> Sizes:
    rows = [Row("wgangp", r, p, 64) for r in (64, 128, 256) for p in ("no", "fp16", "bf16")]
    rows += [Row("lightweight", r, p, 16 if r == 256 else 8) for r in (256, 1024) for p in ("no", "fp16", "bf16")]
    return Sizes(
        rows=tuple(rows), option_base=Row("wgangp", 128, "bf16", 64), channel_base=None, critic_steps=None,
        warmup=3, timed=5, matmul=8192,
        lucidrains_args=("--resolutions", "256", "1024", "--precisions", "fp16", "bf16", "--rounds", "3"),
        compile_backend="inductor",
        data_commands=(("bench/decode_device.py", "--resolutions", "512", "1024", "--images", "64", "--repeats", "3"),
                       ("bench/data_throughput.py", "--resolutions", "--prepared", "64", "256", "--repeats", "3"),
                       ("bench/data_wait.py", "--runs", "2"),
                       ("bench/data_wait.py", "--runs", "1", "--no-debug", "--images", "2048", "--steps", "300", "--log-every", "20"),
                       ("bench/data_throughput.py", "--resolutions", "1024", "--workers", "1", "4", "--rows", "960", "--pin",
                        "--prepared", "--repeats", "3")),
    )


def smoke_sizes() -> Sizes:
    rows = [Row("wgangp", 64, p, 2) for p in ("no", "bf16")] + [Row("lightweight", 64, "no", 2)]  # CPU fp16: tests/test_precision.py
    return Sizes(
        rows=tuple(rows), option_base=Row("wgangp", 64, "no", 2), channel_base=256, critic_steps=1,
        warmup=1, timed=1, matmul=512,
        lucidrains_args=("--resolutions", "64", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--rounds", "1"),
        compile_backend="aot_eager",  # graph capture and AOTAutograd without a C++ compile
        data_commands=(("bench/decode_device.py", "--device", "cpu", "--resolutions", "64", "--images", "4", "--batch", "2",
                        "--repeats", "1"),
                       ("bench/data_throughput.py", "--resolutions", "--prepared", "64", "--images", "4", "--prepared-images", "256",
                        "--prepared-timed", "512", "--repeats", "1"),
                       ("bench/data_wait.py", "--images", "32", "--steps", "20", "--runs", "1")),
    )


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: every FLOP counts towards the total alone."""

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class StepFlops(FlopCounterMode):
    """FlopCounterMode, total only: its per-module tracker's backward hooks fail inside the
    penalty's autograd.grad ("A leaf node was passed to _will_engine_execute_node", torch 2.14)."""

    def __init__(self):
        super().__init__(display=False)
        self.mod_tracker = _GlobalOnly()


class TimeBox:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


# --- 1. environment -------------------------------------------------------------------------

def environment(box: TimeBox, sizes: Sizes) -> dict:
    info = {
        "device": device_name(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
    }
    if CUDA:
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "bf16_native": torch.cuda.is_bf16_supported(including_emulation=False),
            "driver": nvidia_smi("driver_version", box),
        }
    return info


def device_name() -> str:
    return torch.cuda.get_device_name(0) if CUDA else f"{platform.machine()} CPU, {os.cpu_count()} cores"


def nvidia_smi(field: str, box: TimeBox) -> str:
    try:
        result = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=max(1.0, box.left()))
        return result.stdout.strip().splitlines()[0] if result.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown"


# --- subprocesses in a time box ----------------------------------------------------------------

def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """`command` from the repository root, in a process group of its own (see finish)."""
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(process: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Its output once it ends; past `timeout`, its whole process group is killed and TimeoutExpired
    raised with the output so far. Killing the child alone leaves its children running (a timed-out
    torchrun's trainer, pytest-xdist's workers), on the GPU and the CPUs the parts after it measure.
    Probably that: in the H200 check of 2026-12-04 whose ZeRO-2 run was cut by its time box, the data
    part's 64-px DCGAN waited 3.9-4.4% of its steps for data at 692-743 img/s; run alone minutes
    later, 0.16% at 988-1,070 img/s (bench/reports/nvidia-h200-2026-12-04c/)."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise subprocess.TimeoutExpired(process.args, timeout, output=stdout, stderr=stderr) from None
    except BaseException:  # a Ctrl-C here: the group has a session of its own, which the terminal's signal misses
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_boxed(command: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return finish(start(command, env), timeout)


# --- 2. correctness -------------------------------------------------------------------------

def correctness(box: TimeBox, sizes: Sizes) -> dict:
    overflow = forced_overflow()
    # The GPU tests are trainer runs in their own processes: on a GPU, side by side (pytest-xdist).
    workers = ["-n", "4"] if CUDA and importlib.util.find_spec("xdist") else []
    try:
        result = run_boxed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, "tests/test_gpu.py"],
                           timeout=max(5.0, box.left()))
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:]
        tests = {"exit_code": result.returncode, "summary": summary}
        if result.returncode not in (0, 5):  # 5: every test skipped or none collected
            tests["failures"] = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
            tests["output_tail"] = (result.stdout + result.stderr)[-6000:]  # the failing runs' stderr, for the report's reader
    except subprocess.TimeoutExpired as error:
        partial = error.stdout.decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        tests = {"exit_code": None, "summary": "not finished: time box", "output_tail": partial[-6000:]}
    return {"tests/test_gpu.py": tests, "fp16_overflow": overflow}


def forced_overflow() -> dict:
    """A scale of 2**24 makes the first fp16 backward overflow: the trainer's step must skip the
    updates, count them, lower the scale, and update normally once the scale has come down. Normally
    means most updates: the scaler finds its level by overflowing now and then as gradients grow."""
    config = resolve_config(WGANGPConfig, {"data": "toy:8gaussians", "mixed_precision": "fp16", "batch_size": 64,
                                           "critic_steps": 2, "mlp_hidden": 64, "lr": 1e-3, "out": tempfile.mkdtemp()})
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0**24)
    phases = trainer_phases(config, wgangp_objective, scaler=scaler)
    results = [phases.step() for _ in range(30)]
    skipped = sum(r.skipped_updates for r in results)
    finite = all(torch.isfinite(p).all().item() for m in (phases.generator, phases.critic) for p in m.parameters())
    checks = {
        "first_step_skipped": results[0].skipped_updates == 3,
        "scale_lowered": scaler.get_scale() < 2.0**24,
        "normal_steps_after": sum(r.generator_updated for r in results[-10:]) >= 8,
        "weights_finite": finite,
    }
    return {"skipped_steps": skipped, "final_scale": scaler.get_scale(), **checks, "ok": all(checks.values())}


# --- 3. speed ---------------------------------------------------------------------------------

# The denominator of model FLOP utilisation: a large bf16 matmul on a GPU; on a CPU (the smoke run)
# fp32, its fast path (without AVX512-BF16 a CPU's bf16 matmul is emulated and far slower).
PEAK_DTYPE = torch.bfloat16 if CUDA else torch.float32


def matmul_peak(n: int) -> float:
    """FLOP/s of a large matmul in PEAK_DTYPE on this device."""
    a, b = (torch.randn(n, n, device=DEVICE, dtype=PEAK_DTYPE) for _ in range(2))
    for _ in range(2):
        a @ b
    synchronize()
    reps, start = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def build(row: Row, sizes: Sizes, out: str) -> tuple[Phases, Any]:
    config_cls, make_objective = TRAINERS[row.trainer]
    given = {"data": "synthetic", "resolution": row.resolution, "batch_size": row.batch,
             "mixed_precision": resolve_mixed_precision(row.precision, use_cpu=not CUDA), "out": out, **dict(row.options)}
    if sizes.channel_base:
        given |= {"channel_base": sizes.channel_base, "channel_max": 32}
    if sizes.critic_steps:
        given["critic_steps"] = sizes.critic_steps
    config = resolve_config(config_cls, given)
    phases = trainer_phases(config, make_objective, compile_modules=row.compile, compile_backend=sizes.compile_backend)
    return phases, config


def measure(row: Row, sizes: Sizes, peak: float) -> dict:
    """One row: warm-up (compiles included, timed apart), then timed steps with each phase synced."""
    with tempfile.TemporaryDirectory() as out, conv_grad.rewrite(row.penalty_rewrite):
        phases, config = build(row, sizes, out)
        start = time.perf_counter()
        for _ in range(sizes.warmup):
            phases.step()
        synchronize()
        warmup = time.perf_counter() - start
        critic_s, generator_s = [], []
        with PeakMemory() as memory:
            for _ in range(sizes.timed):
                synchronize()
                t0 = time.perf_counter()
                phases.critic_phase()
                synchronize()
                t1 = time.perf_counter()
                phases.generator_phase()
                synchronize()
                critic_s.append(t1 - t0)
                generator_s.append(time.perf_counter() - t1)
        with StepFlops() as flops:
            phases.step()
        step = statistics.median(c + g for c, g in zip(critic_s, generator_s))
        images = config.batch_size * config.critic_steps
        result = {
            "trainer": row.trainer, "resolution": row.resolution, "precision": config.mixed_precision, "batch": row.batch,
            "options": row.label(), "img_per_s": images / step, "critic_ms": 1e3 * statistics.median(critic_s),
            "generator_ms": 1e3 * statistics.median(generator_s), "peak_mem_mib": memory.peak / 2**20,
            "tflop_per_step": flops.get_total_flops() / 1e12, "mfu": flops.get_total_flops() / step / peak,
            "warmup_s": warmup,
        }
        del phases
    release()
    return result


def measure_or_reason(row: Row, sizes: Sizes, peak: float) -> dict:
    try:
        return measure(row, sizes, peak)
    except Exception as error:  # an option a model cannot take is a finding of the check, not its end
        release()
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        return {"trainer": row.trainer, "resolution": row.resolution, "precision": row.precision, "batch": row.batch,
                "options": row.label(), "error": f"{type(error).__name__}: {first[:300]}"}


def measured_rows(rows: tuple[Row, ...], box: TimeBox, sizes: Sizes, peak: float) -> list[dict]:
    results = []
    for row in rows:
        if box.left() <= 0:
            results.append({"trainer": row.trainer, "resolution": row.resolution, "precision": row.precision,
                            "batch": row.batch, "options": row.label(), "error": "not measured: time box"})
            continue
        results.append(measure_or_reason(row, sizes, peak))
    return results


# The order the speed rows are measured in: every trainer and resolution in bf16 first, then fp16,
# then fp32, so that a time box that runs out leaves whole precisions out rather than whole models
# (the first H200 run, in table order, reached 7 of 15 rows: WGAN-GP alone, its 256-px fp32 row
# taking 55 s of the 115). The table keeps its own order.
MEASURE_FIRST = ("bf16", "fp16", "no")


def speed(box: TimeBox, sizes: Sizes) -> dict:
    peak = matmul_peak(sizes.matmul)
    order = sorted(range(len(sizes.rows)), key=lambda i: MEASURE_FIRST.index(sizes.rows[i].precision))
    measured = measured_rows(tuple(sizes.rows[i] for i in order), box, sizes, peak)
    rows = [result for _, result in sorted(zip(order, measured), key=lambda pair: pair[0])]
    return {"matmul_peak_tflops": peak / 1e12, "matmul_dtype": str(PEAK_DTYPE).removeprefix("torch."), "rows": rows}


def options(box: TimeBox, sizes: Sizes) -> dict:
    base = sizes.option_base
    fp32 = replace(base, precision="no")
    rows = [
        base,
        replace(base, options=(("channels_last", True),)),
        replace(base, options=(("fused_adam", False),)),
        fp32,
        replace(fp32, options=(("tf32", False),)),
        # The penalty's convolutions the other way than this device's default (rewritten on a GPU).
        replace(base, penalty_rewrite=not CUDA),
        replace(base, compile=("generator",)),
        replace(base, compile=("critic",)),
    ]
    peak = matmul_peak(sizes.matmul)
    results = measured_rows(tuple(rows), box, sizes, peak)
    # Each option against its own baseline: channels-last, fused Adam and compile against the
    # defaults in the base precision, TF32 off against the fp32 defaults.
    baseline = {base.precision: results[0], "no": results[3]}
    for result, row in zip(results, rows):
        reference = baseline[row.precision]
        if "img_per_s" in result and "img_per_s" in reference:
            result["speed_vs_defaults"] = result["img_per_s"] / reference["img_per_s"]
    return {"backend": sizes.compile_backend, "rows": results}


# --- 5. lucidrains ----------------------------------------------------------------------------

def lucidrains(box: TimeBox, sizes: Sizes) -> dict:
    commands = [("bench/lightweight_vs_lucidrains.py", *sizes.lucidrains_args)]
    if CUDA:
        commands.append(("bench/lightweight_vs_lucidrains.py", "--max-batch", "--resolutions", "1024", "--precisions", "fp16"))
    return {"tables": bench_tables(commands, box)}


def bench_tables(commands: list[tuple[str, ...]], box: TimeBox) -> list[str]:
    """Each bench script's printed tables, in turn, inside the part's time box."""
    tables = []
    for command in commands:
        if box.left() <= 5:
            tables.append("not measured: time box")
            continue
        try:
            result = run_boxed([sys.executable, *command], timeout=box.left())
            tables.append(result.stdout.strip() if result.returncode == 0 else f"failed: {result.stderr.strip()[-500:]}")
        except subprocess.TimeoutExpired as error:
            partial = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
            tables.append(partial.strip() + "\n(not finished: time box)")
    return tables


# --- 7. data ----------------------------------------------------------------------------------

def data(box: TimeBox, sizes: Sizes) -> dict:
    """--decode-device cuda's JPEG batches against one CPU core's decode loop (512 and 1024 px), then
    prepared shards read into pinned batches against a copy-only loop (64 and 256 px), then the time a
    64-px DCGAN fed from prepared shards waits for its data, then the workers' 1024-px decode per core."""
    return {"tables": bench_tables(list(sizes.data_commands), box)}


# --- 6. deepspeed -----------------------------------------------------------------------------

def deepspeed(box: TimeBox, sizes: Sizes) -> dict:
    """The trainer end to end on one process: DDP's path, then ZeRO-1 and ZeRO-2, same flags."""
    try:
        import deepspeed as _  # noqa: F401
    except ImportError:
        return {"rows": [], "note": "deepspeed is not installed: pip install -r requirements.txt (or its wheel) first"}
    # On a GPU: bf16 under DDP, ZeRO-1 and ZeRO-2, then fp16 under ZeRO-2 (DeepSpeed's torch_autocast
    # GradScaler); the smoke run: fp32, DDP against ZeRO-2.
    runs = [("bf16", None), ("bf16", 1), ("bf16", 2), ("fp16", 2)] if CUDA else [("no", None), ("no", 2)]
    # The smoke run trains the toy MLPs: DeepSpeed's CPU path is slow on conv models (seconds a step).
    common = ["train/wgangp.py", "--debug", "--max-steps", "12" if CUDA else "4", "--log-every", "6" if CUDA else "2",
              "--sample-every", "1000", "--ckpt-every", "1000"] + (
        ["--resolution", "128", "--no-sync-bn"] if CUDA else ["--data", "toy:8gaussians"])
    rows = []
    for precision, stage in runs:
        label = f"ZeRO-{stage}" if stage else "DDP"
        if box.left() <= 5:
            rows.append({"precision": precision, "engine": label, "error": "not measured: time box"})
            continue
        with tempfile.TemporaryDirectory() as out:
            flags = [*common, "--mixed-precision", precision, "--out", out] + (["--deepspeed", str(stage)] if stage else [])
            env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
            try:
                result = run_boxed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *flags],
                                   timeout=box.left(), env=env)
            except subprocess.TimeoutExpired:
                rows.append({"precision": precision, "engine": label, "error": "not finished: time box"})
                continue
            metrics = Path(out) / "metrics.jsonl"
            if result.returncode != 0 or not metrics.exists():
                rows.append({"precision": precision, "engine": label,
                             "error": (result.stderr.strip().splitlines() or ["no output"])[-1][:300]})
                continue
            last = json.loads(metrics.read_text().splitlines()[-1])
            rows.append({"precision": precision, "engine": label, "img_per_s": last["img_per_s"],
                         "gpu_mem_gb": last.get("gpu_mem_gb"), "skipped_steps": last["skipped_steps"]})
    return {"rows": rows}


# --- the report -------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    env = report.get("environment", {})
    lines = [f"# GPU check: {env.get('device', device_name())}, {report['date']}", ""]
    if env:
        lines += ["| " + " | ".join(env) + " |", "|" + "---|" * len(env), "| " + " | ".join(map(str, env.values())) + " |", ""]
    if "correctness" in report:
        tests = report["correctness"]["tests/test_gpu.py"]
        overflow = report["correctness"]["fp16_overflow"]
        lines += ["## Correctness", f"- tests/test_gpu.py: {tests['summary']}"]
        lines += [f"  - {failure}" for failure in tests.get("failures", [])]
        if "output_tail" in tests:
            lines += ["", "```", tests["output_tail"].strip(), "```"]
        lines += [f"- forced fp16 overflow: {'ok' if overflow['ok'] else 'FAILED'} ({overflow['skipped_steps']} updates"
                  f" skipped and counted, scale 2^24 → {overflow['final_scale']:.0f}, normal steps after:"
                  f" {overflow['normal_steps_after']})", ""]
    for part, title in (("speed", "Speed"), ("options", "Options (each against the defaults in its precision)")):
        if part not in report:
            continue
        lines += [f"## {title}"]
        if part == "speed":
            lines += [f"{report[part]['matmul_dtype']} matmul peak on this device (MFU's denominator):"
                      f" {report[part]['matmul_peak_tflops']:.2f} TFLOP/s", ""]
        else:
            lines += [f"torch.compile backend: {report[part]['backend']}", ""]
        header = ["trainer", "px", "precision", "batch", "options", "img/s", "critic ms", "generator ms",
                  "peak MiB", "TFLOP/step", "MFU", "warm-up s"] + (["vs defaults"] if part == "options" else [])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in report[part]["rows"]:
            head = [r["trainer"], str(r["resolution"]), r["precision"], str(r["batch"]), r["options"]]
            if "error" in r:
                cells = head + [r["error"]] + [""] * (len(header) - len(head) - 1)
            else:
                cells = head + [significant(r["img_per_s"]), significant(r["critic_ms"]), significant(r["generator_ms"]),
                                significant(r["peak_mem_mib"]), f"{r['tflop_per_step']:.3g}", f"{100 * r['mfu']:.1f}%",
                                significant(r["warmup_s"])]
                if part == "options":
                    cells.append(f"{r['speed_vs_defaults']:.2f}×" if "speed_vs_defaults" in r else "")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if "lucidrains" in report:
        lines += ["## Lightweight GAN against lucidrains' lightweight-gan", ""]
        lines += [table + "\n" for table in report["lucidrains"]["tables"]]
    if "deepspeed" in report:
        lines += ["## DeepSpeed against DDP (the WGAN-GP trainer, one process)", ""]
        if "note" in report["deepspeed"]:
            lines += [report["deepspeed"]["note"], ""]
        lines += ["| precision | engine | img/s | peak GiB | skipped updates |", "|---|---|---|---|---|"]
        for r in report["deepspeed"]["rows"]:
            if "error" in r:
                lines.append(f"| {r['precision']} | {r['engine']} | {r['error']} | | |")
            else:
                memory = f"{r['gpu_mem_gb']:.2f}" if r["gpu_mem_gb"] is not None else "(CPU)"
                lines.append(f"| {r['precision']} | {r['engine']} | {significant(r['img_per_s'])} | {memory} | {r['skipped_steps']} |")
        lines.append("")
    if "data" in report:
        lines += ["## Data: JPEG decode on the device, prepared shards, a trainer's wait", ""]
        lines += [table + "\n" for table in report["data"]["tables"]]
    for part, trace in report.get("errors", {}).items():
        lines += [f"## {part}: failed", "", "```", trace.strip(), "```", ""]
    lines += ["## Time per part (s)", "", "| " + " | ".join(report["seconds"]) + " |", "|" + "---|" * len(report["seconds"]),
              "| " + " | ".join(f"{s:.0f}" for s in report["seconds"].values()) + " |"]
    return "\n".join(lines) + "\n"


def default_report_dir() -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", device_name().lower()).strip("-")
    return ROOT / "bench" / "reports" / f"{slug}-{datetime.date.today().isoformat()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="every part at tiny sizes, on the CPU, under 2 minutes")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--report", type=Path, default=None, help="folder for report.json and report.md")
    args = parser.parse_args(argv)
    if not CUDA and not args.cpu_smoke:
        print("error: no CUDA GPU here; on a GPU run it as is, or check the command on the CPU with --cpu-smoke",
              file=sys.stderr)
        return 2
    sizes, budgets = (smoke_sizes(), BUDGETS["smoke"]) if args.cpu_smoke else (gpu_sizes(), BUDGETS["gpu"])
    parts: dict[str, Callable[[TimeBox, Sizes], dict]] = {
        "environment": environment, "correctness": correctness, "speed": speed, "options": options, "lucidrains": lucidrains,
        "deepspeed": deepspeed, "data": data,
    }
    report: dict[str, Any] = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu_smoke": args.cpu_smoke,
                              "seconds": {}, "errors": {}}
    folder = args.report or default_report_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in PARTS:
        if name not in args.parts:
            continue
        start = time.monotonic()
        print(f"[gpu_check] {name} (time box {budgets[name]} s)", file=sys.stderr, flush=True)
        try:
            report[name] = parts[name](TimeBox(budgets[name]), sizes)
        except Exception as error:  # a part that breaks is a finding: the parts after it still run
            report["errors"][name] = "".join(traceback.format_exception(error))[-4000:]
            print(f"[gpu_check] {name} failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        report["seconds"][name] = time.monotonic() - start
        write_report(report, folder)  # after every part: a check stopped from outside keeps what it measured
    text = write_report(report, folder)
    print(text)
    print(f"[gpu_check] report in {folder}", file=sys.stderr)
    checked = report.get("correctness", {})
    failed = (checked.get("tests/test_gpu.py", {}).get("exit_code") not in (0, 5, None)
              or not checked.get("fp16_overflow", {}).get("ok", True) or bool(report["errors"]))
    return 1 if failed else 0


def write_report(report: dict, folder: Path) -> str:
    """report.json and report.md, each replaced whole; returns the Markdown."""
    text = markdown(report)
    atomic_write_text(folder / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(folder / "report.md", text)
    return text


if __name__ == "__main__":
    sys.exit(main())
