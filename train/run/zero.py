"""DeepSpeed ZeRO for a generator/critic pair (issue 15): one engine per network, every DeepSpeed
setting written here, and a clear refusal for what does not work with a GAN.

What is sound, and why the rest is refused:
- ZeRO-1 and ZeRO-2 partition the optimizer state (and, at 2, the gradients); each rank still holds
  whole weights, so the EMA, sampling, FID and checkpoints work as under DDP. ZeRO-3 partitions the
  weights themselves and breaks all four; ZeRO-0 is DDP.
- DeepSpeed 0.19 hooks every output of an engine's forward so that `loss.backward()` reaches its
  gradient reduction; `torch.autograd.grad(create_graph=True)` through such an output runs that
  reduction in the middle of the critic's step and fails (ZeRO-1/2: IndexError in
  `reduce_ipg_grads`). The critic is therefore always called through the unwrapped module
  (`ZeroUpdates.network`), and only `engine.backward` of the total loss reduces gradients.
- Precision is DeepSpeed's `torch_autocast` mode: fp32 weights, fp32 optimizer, the forward under
  torch.autocast, as the DDP path does; fp16 then gets a real torch.amp.GradScaler
  (`engine.optimizer.torch_autocast_gradscaler`). DeepSpeed's own `bf16` section would hold bf16
  weights, which the EMA and the penalty's numerics do not expect. `lower_precision_safe_modules`
  is empty so that gradients are reduced in fp32, as DDP does.
- Accelerate on a CPU: `Accelerator(cpu=True)` drops the DeepSpeed plugins, and without it
  Accelerate finds no backend and reports one process while DeepSpeed reduces over all of them.
  What makes it right is the backend Accelerate's PartialState is given:
  `InitProcessGroupKwargs(backend="gloo")` with `cpu=False` (`accelerator_options`).

deepspeed is imported only inside the functions that need it: `--help` never pays for it.
"""
import contextlib
import dataclasses
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Literal, Mapping

import torch
from torch import nn

ZeroStage = Literal[1, 2]
ZeroPrecision = Literal["no", "bf16", "fp16"]
NETWORKS = ("critic", "generator")  # the plugin names; the first is Accelerate's active one after __init__


class ZeroRefused(ValueError):
    """A DeepSpeed configuration this project does not run: one line naming the flag, the reason and the fix."""


@dataclasses.dataclass(frozen=True)
class ZeroOptions:
    """Everything one network's DeepSpeed engine is told; the same for both networks."""

    stage: ZeroStage
    micro_batch: int  # per process and micro-batch (--batch-size)
    grad_accum: int = 1  # micro-batches per update (--grad-accum)
    gradient_clipping: float = 0.0  # 0: none, as on the DDP path
    precision: ZeroPrecision = "no"

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ZeroRefused(f"--deepspeed {self.stage}: only ZeRO stages 1 and 2 run here (check_zero says why)")
        if self.precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"precision {self.precision!r}: one of no, bf16, fp16")
        if self.micro_batch < 1 or self.grad_accum < 1 or self.gradient_clipping < 0:
            raise ValueError(f"{self}: micro_batch and grad_accum >= 1, gradient_clipping >= 0")

    def deepspeed_config(self) -> dict:
        """The whole DeepSpeed config: no "auto", nothing left to Accelerate's or DeepSpeed's defaults
        that changes the numbers (Accelerate fills an "auto" gradient_clipping with 1.0)."""
        autocast = self.precision != "no"
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": self.grad_accum,
            "gradient_clipping": self.gradient_clipping,
            "zero_optimization": {
                "stage": self.stage,
                "contiguous_gradients": True,
                "overlap_comm": False,  # CPU/gloo has no second stream; on a GPU it would only overlap
                "reduce_scatter": True,
                "allgather_partitions": True,
                # Elements per communication bucket (DeepSpeed's default, 5e8, is a 2 GB fp32 buffer
                # per engine, larger than both networks together: 27 M parameters at 1024 px).
                "reduce_bucket_size": 50_000_000,
                "allgather_bucket_size": 50_000_000,
                "offload_optimizer": {"device": "none"},
                "offload_param": {"device": "none"},
            },
            "fp16": {"enabled": False},
            "bf16": {"enabled": False},
            "torch_autocast": {
                "enabled": autocast,
                "dtype": "float16" if self.precision == "fp16" else "bfloat16",
                # Empty: every gradient is reduced in fp32, as under DDP.
                "lower_precision_safe_modules": [],
            },
            "zero_allow_untested_optimizer": True,  # the project's torch.optim.Adam
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }


def deepspeed_plugins(options: ZeroOptions) -> dict:
    """One `accelerate.utils.DeepSpeedPlugin` per network ("critic", "generator"), each from the
    whole config above."""
    from accelerate.utils import DeepSpeedPlugin

    # `accelerate launch` with a DeepSpeed config lists the fields it read in ACCELERATE_CONFIG_DS_FIELDS,
    # and a plugin built from a dict then refuses to start; those fields reached ZeroOptions through
    # `zero_from_environment` (and check_zero), so the plugin is built without the list.
    with _without_env("ACCELERATE_CONFIG_DS_FIELDS"):
        return {name: DeepSpeedPlugin(hf_ds_config=options.deepspeed_config()) for name in NETWORKS}


def accelerator_options(options: ZeroOptions, use_cpu: bool, timeout: timedelta = timedelta(minutes=30)) -> dict:
    """Keyword arguments for `Accelerator(...)` under DeepSpeed (with the loop's own, such as log_with);
    `timeout` bounds every collective (--collective-timeout).

    On a CPU the backend is named: Accelerate's PartialState then initialises DeepSpeed's process
    group with gloo and counts its processes (without it: num_processes=1 on every rank); `cpu`
    stays False because `cpu=True` drops the plugins (the device is still the CPU)."""
    from accelerate.utils import InitProcessGroupKwargs

    handlers = [InitProcessGroupKwargs(backend="gloo", timeout=timeout) if use_cpu else InitProcessGroupKwargs(timeout=timeout)]
    # Accelerate's own autocast stays off: DeepSpeed's torch_autocast section is the one autocast.
    return {"deepspeed_plugins": deepspeed_plugins(options), "cpu": False, "mixed_precision": "no",
            "kwargs_handlers": handlers}


def prepare_pair(accelerator, generator: nn.Module, critic: nn.Module, g_opt, d_opt):
    """Each network with its optimizer into its own engine (its own plugin selected first);
    returns (generator_engine, critic_engine, g_opt, d_opt) in the order `prepare` would."""
    state = accelerator.state
    state.select_deepspeed_plugin("critic")
    critic, d_opt = accelerator.prepare(critic, d_opt)
    state.select_deepspeed_plugin("generator")
    generator, g_opt = accelerator.prepare(generator, g_opt)
    return generator, critic, g_opt, d_opt


# --- the step ---------------------------------------------------------------------------------

def gradient_scaler(engine) -> "torch.amp.GradScaler | None":
    """The engine's fp16 GradScaler (torch_autocast mode), which the penalty scales its inner
    gradients with as on the DDP path; None in fp32 and bf16."""
    return getattr(engine.optimizer, "torch_autocast_gradscaler", None)


class ZeroUpdates:
    """The `Updates` (train.run.updates) of the two DeepSpeed engines: the networks to call, when to
    reduce, the backward and the update.

    The engines divide each micro-batch's loss by the accumulation steps and reduce at the boundary
    they are told (no `no_sync`: it asserts under ZeRO-2); each decides on its own update, skipping a
    non-finite one with the same verdict on every rank."""

    def __init__(self, grad_accum: int):
        self.grad_accum = grad_accum

    def network(self, engine) -> nn.Module:
        """The engine's module under the engine's autocast, for the objective's and the loop's calls.

        Never the engine itself (see the module docstring): the penalty differentiates through the
        critic, and the generator's loss must not run the critic engine's gradient reduction. The
        gradients still reach the engine, whose `backward` of the total loss reduces them. The
        generator follows the same rule, though its engine's own forward would do the same."""
        return _Autocast(engine.module, _autocast_dtype(engine))

    def sync_unless_last(self, engine, micro: int) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, engine, loss: torch.Tensor, micro: int) -> None:
        """One micro-batch's backward. The engine divides by gradient_accumulation_steps itself (do not
        divide the loss as on the DDP path), and reduces the gradients at the boundary it is told."""
        engine.set_gradient_accumulation_boundary(micro == self.grad_accum - 1)
        engine.backward(loss)

    def update(self, optimizer, engine) -> bool:
        """ZeRO-1/2 skip an update whose gradient norm is not finite (the same all-reduced verdict on
        every rank) and clear the gradients themselves.

        Under fp16, DeepSpeed 0.19 returns from its step on that verdict before its GradScaler has
        seen the overflow, so the scale never came down: from the first overflow on (at the initial
        2^16, the first update), every update overflowed and was skipped (an H200: 60 skipped of 60
        in 12 steps). The scale is lowered here as GradScaler.update would have lowered it. An update
        the GradScaler itself leaves out lowers its scale, as on the DDP path."""
        scaler = gradient_scaler(engine)
        before = scaler.get_scale() if scaler is not None else None  # a host sync, under fp16 only
        engine.step()
        if engine.optimizer.overflow:
            if scaler is not None:
                _back_off(scaler)
            return False
        return scaler is None or scaler.get_scale() >= before


def _back_off(scaler: "torch.amp.GradScaler") -> None:
    """What GradScaler.update does after an overflow: the scale times the backoff factor, and the
    count of good steps towards the next growth back to 0 (through its public state dict)."""
    state = scaler.state_dict()
    state["scale"] *= state["backoff_factor"]
    state["_growth_tracker"] = 0
    scaler.load_state_dict(state)


class _Autocast(nn.Module):
    """A module's forward under torch.autocast (or as is, for fp32): what the engine's forward adds."""

    def __init__(self, module: nn.Module, dtype: torch.dtype | None):
        super().__init__()
        object.__setattr__(self, "module", module)  # not a submodule: parameters() stays the engine's business
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        if self.dtype is None:
            return self.module(*args, **kwargs)
        device = next(self.module.parameters()).device.type
        with torch.autocast(device, dtype=self.dtype):
            return self.module(*args, **kwargs)

    def requires_grad_(self, requires_grad: bool = True):
        self.module.requires_grad_(requires_grad)
        return self

    def parameters(self, recurse: bool = True):
        return self.module.parameters(recurse)


def _autocast_dtype(engine) -> torch.dtype | None:
    return engine.torch_autocast_dtype() if engine.torch_autocast_enabled() else None


# --- what is refused ------------------------------------------------------------------------

def check_zero(stage: int | None, precision: str, use_cpu: bool, environ: Mapping[str, str] = os.environ) -> None:
    """Raise ZeroRefused (one line: the flag, the reason, the fix) for a DeepSpeed configuration
    that would run wrongly or not at all; before any compute. `stage` is --deepspeed (None: off),
    else the stage of an `accelerate launch` DeepSpeed config."""
    launched = environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if stage is None and launched:
        stage = int(environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    if stage is None:
        return
    flag = f"--deepspeed {stage}"
    if stage == 0:
        raise ZeroRefused(f"{flag}: ZeRO-0 partitions nothing and is plain data parallelism; drop --deepspeed (DDP is the same thing)")
    if stage == 3:
        raise ZeroRefused(
            f"{flag}: ZeRO-3 partitions the weights, which breaks the EMA, sampling, FID and checkpoints; use --deepspeed 2"
        )
    if stage not in (1, 2):
        raise ZeroRefused(f"{flag}: no such ZeRO stage; use --deepspeed 1 or 2")
    for variable, what in (
        ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "offload_optimizer_device"),
        ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "offload_param_device"),
    ):
        if environ.get(variable, "none").lower() not in ("none", ""):
            raise ZeroRefused(
                f"{flag}: {what}: {environ[variable]} in the accelerate config: CPU/NVMe offload is not supported"
                f" for GAN training here; set {what}: none"
            )
    clipping = environ.get("ACCELERATE_GRADIENT_CLIPPING")
    if clipping is not None and clipping.lower() == "auto":
        raise ZeroRefused(
            f"{flag}: gradient_clipping: auto in the accelerate config clips silently at 1.0 (Accelerate's"
            f" default); write gradient_clipping: 0.0 (or the value you mean)"
        )
    _check_deepspeed_config_file(flag, environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none"))
    if environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        raise ZeroRefused(
            f"{flag}: ACCELERATE_USE_CPU (accelerate launch --cpu) makes Accelerate drop the DeepSpeed plugins"
            f" silently and train with DDP; launch without --cpu (a machine without CUDA runs DeepSpeed on the CPU)"
        )
    if precision == "fp16" and use_cpu:
        raise ZeroRefused(
            f"{flag} --mixed-precision fp16: DeepSpeed's fp16 needs a GPU; use bf16 (or fp32) on the CPU"
        )


def zero_from_environment(environ: Mapping[str, str] = os.environ) -> tuple[int | None, float]:
    """(stage, gradient_clipping) from an `accelerate launch` DeepSpeed config, (None, 0.0) without one."""
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None, 0.0
    clipping = environ.get("ACCELERATE_GRADIENT_CLIPPING", "0.0")
    return int(environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")), float(clipping) if clipping.lower() != "none" else 0.0


def _check_deepspeed_config_file(flag: str, path: str) -> None:
    """A DeepSpeed JSON named by an accelerate config (deepspeed_config_file): the project writes its
    own config, so one given there is refused rather than half-applied."""
    if path.lower() in ("none", ""):
        return
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ZeroRefused(f"{flag}: deepspeed_config_file {path}: unreadable ({error}); remove it from the accelerate config") from error
    zero = config.get("zero_optimization", {})
    for what in ("offload_optimizer", "offload_param"):
        if str(zero.get(what, {}).get("device", "none")).lower() != "none":
            raise ZeroRefused(f"{flag}: {what} in {path}: CPU/NVMe offload is not supported for GAN training here; remove it")
    if config.get("gradient_clipping") == "auto":
        raise ZeroRefused(f"{flag}: gradient_clipping: \"auto\" in {path} clips silently at 1.0; write the value you mean")
    raise ZeroRefused(
        f"{flag}: deepspeed_config_file {path}: the project writes every DeepSpeed setting itself; use the"
        f" deepspeed_config settings of launch/accelerate/deepspeed_zero2.yaml instead"
    )


@contextlib.contextmanager
def _without_env(name: str):
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved
