"""The training loop shared by every trainer: critic phase, generator phase, EMA, outputs.

It knows models only as callables and objectives only through `critic_loss` / `generator_loss`.
"""
import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import broadcast
from torch import nn
from torch.nn.utils import get_total_norm
from tqdm.auto import tqdm

from train.common.failpoints import failpoint, step_window
from train.common.seeds import SeedPurpose, stream_seed
from train.data import (
    DataError,
    DataSpec,
    check_skipped,
    open_stream,
    to_model_input,
    toy_modes,
)
from train.gan.instance_noise import InstanceNoise
from train.gan.objectives import Objective
from train.report.fid import FIDEvaluator, FIDUnavailable
from train.report.metrics import StatWindow
from train.report.monitor import CollapseMonitor
from train.report.reporter import Reporter
from train.report.tracking import WandbRun, new_run_id, resolve_wandb_mode
from train.run import zero
from train.run.checkpoint import (
    CheckpointWriteError,
    agreed_whole_checkpoint,
    checkpoint_to_resume,
    load_checkpoint,
    load_weights,
    remove_partial_checkpoints,
    save_checkpoint,
)
from train.run.config import (
    TrainConfig,
    collapse_thresholds,
    resuming,
    save_config,
    time_limit_seconds,
)
from train.run.ema import GeneratorEMA
from train.run.networks import build_networks, fixed_noise, render_samples
from train.run.outcome import RunEnd, RunStatus
from train.run.performance import adam, configure_backends, memory_format
from train.run.precision import (
    accelerate_precision,
    prepare,
    resolve_mixed_precision,
    use_cpu_fp16,
)
from train.run.profiling import StepProfiler
from train.run.state import TrainState
from train.run.stop import GracefulStop

# Test-only fault injection (train/common/failpoints.py): empty ranges unless set.
POISONED_LOSS_STEPS, POISONED_GRAD_STEPS = step_window("nonfinite_loss"), step_window("nonfinite_grad")
# Seconds added to every step of a run's first start: it lasts on any machine; once resumed, it runs at full speed.
STEP_PAUSE = float(failpoint("step_pause") or 0)

ObjectiveFactory = Callable[[TrainConfig, "torch.amp.GradScaler | None", torch.Generator], Objective]


def make_accelerator(config: TrainConfig, log_with: str | None = None) -> Accelerator:
    # Without CUDA, Accelerate must be told to use the CPU, or torchrun's ranks never form a group.
    use_cpu = config.runs_on_cpu()
    if not use_cpu:
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its fastest kernels
    precision = resolve_mixed_precision(config.mixed_precision, use_cpu)
    if config.deepspeed:
        options = zero.ZeroOptions(config.deepspeed, micro_batch=config.batch_size, grad_accum=config.grad_accum,
                                   gradient_clipping=config.gradient_clipping, precision=precision)
        return Accelerator(**zero.accelerator_options(options, use_cpu), log_with=log_with)
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=accelerate_precision(precision, use_cpu),
        # Default DDP flags on purpose: static_graph breaks the penalty's double backward.
        kwargs_handlers=[DistributedDataParallelKwargs(static_graph=False)],
        log_with=log_with,
    )
    if accelerator.scaler is None and precision == "fp16":
        use_cpu_fp16(accelerator)
    return accelerator


@dataclasses.dataclass
class StepResult:
    skipped_updates: int  # optimizer updates left out for non-finite gradients (or an fp16 overflow)
    generator_updated: bool


class DataParallelUpdates:
    """How the phases backpropagate and update under DDP (or on one process); train.run.zero.ZeroUpdates
    is the same object for DeepSpeed engines."""

    def __init__(self, accelerator: Accelerator, grad_accum: int):
        self.accelerator, self.grad_accum = accelerator, grad_accum

    def network(self, model: nn.Module) -> nn.Module:
        return model

    def sync_unless_last(self, model: nn.Module, micro: int):
        # Under DDP, all-reduce gradients only on the last micro-batch of an accumulated step.
        return self.accelerator.no_sync(model) if micro < self.grad_accum - 1 else contextlib.nullcontext()

    def backward(self, model: nn.Module, loss: torch.Tensor, micro: int, poison: str | None) -> None:
        self.accelerator.backward(loss / self.grad_accum)

    def update(self, optimizer: torch.optim.Optimizer, model: nn.Module, poison: str | None) -> bool:
        return _update(self.accelerator, optimizer, model, poison)


class Phases:
    """The two halves of an adversarial step, each usable alone (the GPU check times them apart).

    `critic_steps` critic updates, then one generator update, each over `grad_accum` micro-batches.
    An update whose gradients are not all finite is left out, so no NaN or Inf reaches the weights
    or the optimizers' state. `poison` ("loss" or "grad") is the fault injection of
    train.common.failpoints: a non-finite loss or gradient in every phase."""

    def __init__(
        self,
        accelerator: Accelerator,
        generator: nn.Module,
        critic: nn.Module,
        g_opt: torch.optim.Optimizer,
        d_opt: torch.optim.Optimizer,
        objective: Objective,
        next_real: Callable[[], torch.Tensor],
        latents: Callable[[], torch.Tensor],
        critic_steps: int,
        grad_accum: int,
        record: Callable[[dict], None],
        perturb: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
        updates: "DataParallelUpdates | zero.ZeroUpdates | None" = None,
    ):
        self.accelerator, self.generator, self.critic, self.g_opt, self.d_opt = accelerator, generator, critic, g_opt, d_opt
        self.updates = updates or DataParallelUpdates(accelerator, grad_accum)
        # What the objective and the loop call: the models themselves, or an engine's module (zero.py says why).
        self.run_generator, self.run_critic = self.updates.network(generator), self.updates.network(critic)
        self.objective, self.next_real, self.latents, self.record = objective, next_real, latents, record
        self.critic_steps, self.grad_accum = critic_steps, grad_accum
        # What the critic sees, "real" or "fake" (instance noise); the identity unless given.
        self.perturb = perturb or (lambda samples, kind: samples)

    def _backward(self, model: nn.Module, loss: torch.Tensor, micro: int, poison: str | None) -> None:
        self.updates.backward(model, loss * float("nan") if poison == "loss" else loss, micro, poison)

    def critic_phase(self, poison: str | None = None) -> int:
        """The critic updates; how many were left out."""
        skipped = 0
        self.generator.train()
        self.critic.requires_grad_(True)
        for _ in range(self.critic_steps):
            for micro in range(self.grad_accum):
                real = self.perturb(self.next_real(), "real")
                with torch.no_grad():
                    fake = self.perturb(self.run_generator(self.latents()), "fake")
                with self.updates.sync_unless_last(self.critic, micro):
                    loss, stats = self.objective.critic_loss(self.run_critic, real, fake)
                    self._backward(self.critic, loss, micro, poison)
                self.record(stats)
            skipped += not self.updates.update(self.d_opt, self.critic, poison)
        return skipped

    def generator_phase(self, poison: str | None = None) -> bool:
        """The generator update; whether it was made."""
        # Frozen, the critic's weights get no gradients from the generator's loss (and DDP expects none).
        self.critic.requires_grad_(False)
        for micro in range(self.grad_accum):
            with self.updates.sync_unless_last(self.generator, micro):
                fake = self.perturb(self.run_generator(self.latents()), "fake")
                loss, stats = self.objective.generator_loss(self.run_critic, fake)
                self._backward(self.generator, loss, micro, poison)
            self.record(stats)
        return self.updates.update(self.g_opt, self.generator, poison)

    def step(self, poison: str | None = None) -> StepResult:
        skipped = self.critic_phase(poison)
        generator_updated = self.generator_phase(poison)
        return StepResult(skipped + (not generator_updated), generator_updated)


def _update(accelerator: Accelerator, optimizer: torch.optim.Optimizer, model: nn.Module, poison: str | None) -> bool:
    """Step the optimizer unless a gradient is non-finite; whether it stepped. Under DDP every rank
    holds the same all-reduced gradients, so every rank takes the same decision."""
    if poison == "grad":
        next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
    if accelerator.scaler is None:  # under fp16 the GradScaler makes this same check itself
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and not torch.isfinite(get_total_norm(grads)):  # one host sync per update
            optimizer.zero_grad(set_to_none=True)
            return False
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return not optimizer.step_was_skipped


def train(config: TrainConfig, make_objective: ObjectiveFactory) -> RunEnd:
    """Train to --max-steps, or until a collapse alarm (--stop-on-collapse), a stop signal or
    --time-limit ends the run early with a checkpoint."""
    wandb_mode, wandb_hint = resolve_wandb_mode(config.wandb_mode)
    accelerator = make_accelerator(config, log_with=WandbRun.log_with(wandb_mode))
    # From the first moment: a signal during start-up stops the run after its first step.
    with GracefulStop(accelerator, time_limit_seconds(config)) as stop:
        return _train(config, make_objective, accelerator, stop, wandb_mode, wandb_hint)


def _train(
    config: TrainConfig,
    make_objective: ObjectiveFactory,
    accelerator: Accelerator,
    stop: GracefulStop,
    wandb_mode: str,
    wandb_hint: str | None,
) -> RunEnd:
    out = Path(config.out)
    reporter = Reporter(accelerator, out, wandb_enabled=wandb_mode != "disabled")
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    data = config.data_options

    generator, critic = build_networks(config)
    memory_format(config.channels_last, generator, critic)
    # From here torch's global generator (injected noise, dropout) differs per rank; Accelerate
    # saves and restores it per rank with each checkpoint.
    torch.manual_seed(stream_seed(config.seed, rank, SeedPurpose.TORCH_GLOBAL))
    ema = GeneratorEMA(generator, config.ema_decay, device=device)
    if config.sync_bn and world > 1 and device.type == "cuda":
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
    configure_backends(config.tf32, device)
    (g_lr, g_betas), (d_lr, d_betas) = config.optimizer_settings()
    g_opt = adam(generator.parameters(), g_lr, g_betas, config.fused_adam, device)
    d_opt = adam(critic.parameters(), d_lr, d_betas, config.fused_adam, device)
    if config.deepspeed:
        generator, critic, g_opt, d_opt = zero.prepare_pair(accelerator, generator, critic, g_opt, d_opt)
        updates, scaler = zero.ZeroUpdates(config.grad_accum), zero.gradient_scaler(critic)
    else:
        generator, critic, g_opt, d_opt = prepare(accelerator, generator, critic, g_opt, d_opt)
        updates, scaler = DataParallelUpdates(accelerator, config.grad_accum), accelerator.scaler

    latent_rng = torch.Generator(device=device).manual_seed(stream_seed(config.seed, rank, SeedPurpose.LATENTS))
    stream = open_stream(
        data, batch_size=config.batch_size, seed=config.seed, rank=rank, world_size=world, pin_memory=device.type == "cuda"
    )
    # Decoding workers are shut down on every way out, an error included, or the process cannot exit.
    profiler = StepProfiler(config.profile, out, rank, print_table=accelerator.is_main_process)
    with contextlib.closing(stream), profiler:
        objective = make_objective(config, scaler, latent_rng)
        eval_noise = fixed_noise(config.num_samples, config.latent_dim, config.seed)
        modes, std = toy_modes(data.spec.name) if data.spec.is_points else (None, 0.0)

        fid = None
        if config.fid_every:
            try:
                fid = FIDEvaluator(
                    accelerator,
                    data,
                    num_samples=config.fid_samples,
                    batch_size=config.batch_size,
                    cache_dir=Path(config.fid_cache).expanduser(),
                    seed=config.seed,
                    weights_path=config.fid_weights,
                )
            except FIDUnavailable as error:  # a long run is worth more than its FID curve
                if accelerator.is_main_process:
                    print(f"error: {error}; training continues with FID disabled", file=sys.stderr)
        monitor = CollapseMonitor(collapse_thresholds(config), critic_key=config.collapse_critic_key)
        window = StatWindow()
        state = TrainState(latent_rng=latent_rng, stream=stream, window=window, objective=objective, monitor=monitor,
                           run_id=new_run_id(), world_size=world)
        collapsed, end = False, RunEnd(RunStatus.FINISHED, config.max_steps)
        resumed = resuming(config)
        if resumed:
            ema.load_state_dict(load_checkpoint(accelerator, checkpoint_to_resume(accelerator, out), state))
            if state.step >= config.max_steps:  # a requeue or a rerun after the last step: nothing to do
                accelerator.print(
                    f"the run in {out} already finished at step {state.step}; raise --max-steps to go on"
                )
                del generator, critic, g_opt, d_opt
                _release(accelerator)
                return RunEnd(RunStatus.FINISHED, state.step, "already finished")
            accelerator.print(f"resumed from step {state.step}")
            if not state.restored_streams:
                accelerator.print(
                    f"the checkpoint was made by another number of processes: the weights, optimizers and step"
                    f" continue; the data is split anew over {world} processes and each share read from its start"
                )
        # The first batch proves the data can be read: until it has been decoded, nothing is
        # written to --out, so a bad start leaves no half-made run behind.
        waited, failure = time.perf_counter(), None
        try:
            pending = [next(stream)]  # this step's real batches, drawn before any update (below)
        except DataError as error:
            failure = error
        if stop.any_rank(failure is not None):  # collective: every rank leaves, and rank 0 says why
            raise failure or DataError(f"--data {data.spec}: no readable image on another process")
        data_wait = time.perf_counter() - waited

        if accelerator.is_main_process:
            remove_partial_checkpoints(out)
            save_config(config, out)
        reporter.start(
            resume_step=state.step if resumed else None,
            run_id=state.run_id,
            wandb_options=dict(
                project=config.wandb_project,
                config=dataclasses.asdict(config),
                mode=wandb_mode,
                entity=config.wandb_entity,
                name=config.wandb_name,
                tags=config.wandb_tags,
            ),
        )
        if wandb_hint:
            accelerator.print(wandb_hint.format(dir=out))

        def latents() -> torch.Tensor:
            return torch.randn(config.batch_size, config.latent_dim, device=device, generator=latent_rng)

        last_real = None

        def next_real() -> torch.Tensor:
            nonlocal last_real
            last_real = to_model_input(pending.pop(0), device)
            return last_real

        noise = InstanceNoise(config.instance_noise, config.instance_noise_decay, config.instance_noise_steps,
                              config.instance_noise_real_only)
        phases = Phases(
            accelerator, generator, critic, g_opt, d_opt, objective, next_real, latents, config.critic_steps,
            config.grad_accum, window.add, perturb=lambda samples, kind: noise(samples, kind, state.step, latent_rng),
            updates=updates,
        )
        batches_per_step = config.critic_steps * config.grad_accum
        real_per_step = config.batch_size * batches_per_step * world
        progress = tqdm(
            total=config.max_steps, initial=state.step, unit="step", disable=not accelerator.is_main_process
        )
        window_start, window_steps, session_start = time.perf_counter(), 0, state.step
        for step in range(state.step + 1, config.max_steps + 1):
            # A step's batches are all drawn before its first update: should the data fail (a shard
            # deleted or truncated, a decoding worker killed), every rank still holds the state
            # after the previous step, and stops there with a checkpoint.
            waited, data_failure = time.perf_counter(), None
            try:
                while len(pending) < batches_per_step:
                    pending.append(next(stream))
            except Exception as error:  # whatever the reader raised: it ends the run, named, below
                data_failure = describe_data_failure(data.spec, error)
            data_wait += time.perf_counter() - waited
            if stop.any_rank(data_failure is not None):  # collective: every rank, every step
                end = RunEnd(RunStatus.DATA_FAILED, state.step, data_failure or "reading the data failed on another rank")
                if state.step > session_start:
                    try:
                        save_checkpoint(accelerator, out, state, ema.state_dict(), config.keep_checkpoints)
                        end.reason += f"; stopped with a checkpoint at step {state.step}: fix the data, then --resume"
                    except CheckpointWriteError as error:
                        end.reason += f"; and the checkpoint at step {state.step} failed too: {error}"
                else:
                    end.reason += "; fix the data, then start again (or --resume)"
                break
            state.step = step
            poison = "loss" if step in POISONED_LOSS_STEPS else "grad" if step in POISONED_GRAD_STEPS else None
            result = phases.step(poison)
            state.skipped_steps += result.skipped_updates
            if result.generator_updated:
                ema.update(accelerator.unwrap_model(generator))
            state.nonfinite_streak = state.nonfinite_streak + 1 if result.skipped_updates else 0
            if state.nonfinite_streak >= config.nonfinite_patience:
                if state.rollbacks >= config.max_rollbacks:
                    end = RunEnd(
                        RunStatus.DIVERGED, step,
                        f"{state.nonfinite_streak} non-finite steps in a row after {state.rollbacks} rollbacks",
                    )
                elif (checkpoint := agreed_whole_checkpoint(accelerator, out, "rolling back to")[0]) is None:
                    end = RunEnd(RunStatus.DIVERGED, step, f"{state.nonfinite_streak} non-finite steps in a row, no checkpoint to roll back to")
                else:
                    # The weights go back; the step count, the data position and the latent stream
                    # go on, so the batches that led here are not replayed and no step is logged twice.
                    ema.load_state_dict(load_weights(accelerator, checkpoint))
                    state.nonfinite_streak, state.rollbacks = 0, state.rollbacks + 1
                    reporter.alert(step, [
                        f"divergence: {config.nonfinite_patience} non-finite steps in a row; weights, optimizers"
                        f" and EMA rolled back to {checkpoint.name} (rollback {state.rollbacks} of at most"
                        f" {config.max_rollbacks}); training goes on with new data"
                    ])
            profiler.step()
            if STEP_PAUSE and not resumed:
                time.sleep(STEP_PAUSE)
            window_steps += 1
            progress.update()

            last = step == config.max_steps
            if step % config.log_every == 0 or last:
                means = window.means(accelerator)
                counters = stream.counters()
                if counters:  # rows read and skipped, summed over ranks: every rank takes the same decision
                    totals = accelerator.reduce(torch.tensor(list(counters.values()), device=device), reduction="sum")
                    counters = dict(zip(counters, totals.tolist()))
                    try:
                        check_skipped(data.spec, counters["data_read"], counters["data_skipped"])
                    except DataError as error:  # the same totals, so the same verdict, on every rank
                        end = RunEnd(RunStatus.DATA_FAILED, step, f"{error}; stopped with a checkpoint at step {step}")
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    **means,
                    "img_per_s": real_per_step * window_steps / elapsed,
                    "data_wait_frac": data_wait / elapsed,
                    "lr": config.lr,
                    **({"instance_noise_std": noise.sigma(step)} if config.instance_noise else {}),
                    "skipped_steps": state.skipped_steps,
                    "world_size": world,
                    **counters,
                }
                if device.type == "cuda":
                    record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30  # peak in this window
                    torch.cuda.reset_peak_memory_stats(device)
                reporter.log(record)
                warnings = monitor.observe_losses(record)  # the same means, so the same verdict, on every rank
                reporter.alert(step, warnings)
                collapsed |= bool(warnings)
                if accelerator.is_main_process:
                    progress.set_postfix(img_s=f"{record['img_per_s']:.0f}", d_loss=f"{means['d_loss']:.3f}", refresh=False)
                window_start, window_steps, data_wait = time.perf_counter(), 0, 0.0
                if step % config.log_every == 0:
                    # A final, off-cadence line leaves the window open: a resumed run then logs the
                    # same means at the next regular step as an uninterrupted one.
                    window.reset()
            if step % config.sample_every == 0 or last:
                # Before the checkpoint, so that the diversity seen here is part of the saved monitor.
                sample_alarm = False
                if accelerator.is_main_process:
                    samples = render_samples(ema.generator, eval_noise)
                    reporter.samples(step, samples, last_real, modes, std)
                    warnings = monitor.observe_samples(step, samples)
                    reporter.alert(step, warnings)
                    sample_alarm = bool(warnings)
                if config.stop_on_collapse:  # the samples live on the main process: its verdict for all
                    collapsed |= bool(broadcast(torch.tensor([int(sample_alarm)], device=device)).item())
            if fid is not None and (step % config.fid_every == 0 or last):
                scores = fid.evaluate(ema.generator, config.latent_dim)  # collective: every rank
                reporter.log({"step": step, **scores, "fid_samples": config.fid_samples})
            stop_reason = stop.agreed()  # collective: every rank, every step
            if end.status is not RunStatus.FINISHED:
                pass  # diverged, or too many unreadable rows: above
            elif config.stop_on_collapse and collapsed:
                end = RunEnd(RunStatus.COLLAPSED, step, "collapse alarm (--stop-on-collapse)")
            elif stop_reason and not last:
                end = RunEnd(RunStatus.STOPPED, step, stop_reason)
            stopping = end.status is not RunStatus.FINISHED
            if step % config.ckpt_every == 0 or last or stopping:
                try:
                    save_checkpoint(accelerator, out, state, ema.state_dict(), config.keep_checkpoints)
                except CheckpointWriteError as error:  # a full disk, say: the checkpoint before stays whole
                    end = RunEnd(RunStatus.STOPPED, step, str(error))
                    progress.close()  # the line goes below the progress bar, not after it
                    accelerator.print(f"error: {error}", file=sys.stderr)
                    break
            if stopping:
                accelerator.print(f"stopped at step {step}: {end.reason}; checkpoint saved")
                break
        progress.close()
        reporter.finish(state.step, resumable=end.status is RunStatus.STOPPED)

        del generator, critic, g_opt, d_opt
        _release(accelerator)
        return end


def describe_data_failure(spec: DataSpec, error: Exception) -> str:
    """One line for a reader's failure: a DataError says it all; a worker's exception arrives as
    its whole traceback, whose last line says what happened."""
    if isinstance(error, DataError):
        return str(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"--data {spec}: reading failed ({type(error).__name__}: {lines[-1] if lines else 'no message'})"


def _release(accelerator: Accelerator) -> None:
    # The DDP-wrapped models go before the process group (the caller drops its own references
    # first): otherwise gloo can abort at exit.
    accelerator.free_memory()
    accelerator.end_training()
