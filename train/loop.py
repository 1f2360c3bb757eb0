"""The training loop shared by every trainer: critic phase, generator phase, EMA, outputs.

It knows models only as callables and objectives only through `critic_loss` / `generator_loss`.
"""
import contextlib
import dataclasses
import inspect
import sys
import time
from pathlib import Path
from typing import Callable, Protocol

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import broadcast
from torch import nn
from tqdm.auto import tqdm

from models import build_models
from train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from train.config import TrainConfig, collapse_thresholds, resuming, save_config, time_limit_seconds
from train.data import check_skipped, open_stream, parse_data_spec, stream_seed, to_model_input, toy_modes
from train.ema import GeneratorEMA
from train.fid import FIDEvaluator, FIDUnavailable
from train.metrics import StatWindow
from train.monitor import CollapseMonitor
from train.precision import resolve_mixed_precision
from train.reporting import Reporter
from train.stop import GracefulStop
from train.tracking import WandbRun, new_run_id, resolve_wandb_mode

SAMPLE_CHUNK = 16


@dataclasses.dataclass
class RunEnd:
    status: str  # "finished"; "collapsed" (--stop-on-collapse); "stopped" (a signal or --time-limit: resumable)
    step: int
    reason: str | None = None


class Objective(Protocol):
    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict]: ...
    def generator_loss(self, critic: nn.Module, fake: torch.Tensor) -> tuple[torch.Tensor, dict]: ...
    def state_dict(self) -> dict: ...  # saved with each rank's checkpoint
    def load_state_dict(self, state: dict) -> None: ...


ObjectiveFactory = Callable[[TrainConfig, "torch.amp.GradScaler | None", torch.Generator], Objective]


def make_accelerator(config: TrainConfig, log_with: str | None = None) -> Accelerator:
    # Without CUDA, Accelerate must be told to use the CPU, or torchrun's ranks never form a group.
    use_cpu = config.cpu or not torch.cuda.is_available()
    if not use_cpu:
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its fastest kernels
    return Accelerator(
        cpu=use_cpu,
        mixed_precision=resolve_mixed_precision(config.mixed_precision, use_cpu),
        # Default DDP flags on purpose: static_graph breaks the penalty's double backward.
        kwargs_handlers=[DistributedDataParallelKwargs(static_graph=False)],
        log_with=log_with,
    )


def fixed_noise(config: TrainConfig) -> torch.Tensor:
    """The evaluation latents: a function of the run's seed alone, so the same on every rank and resume."""
    return torch.randn(config.num_samples, config.latent_dim, generator=torch.Generator().manual_seed(config.seed))


def build_networks(config: TrainConfig) -> tuple[nn.Module, nn.Module]:
    """The run's pair from its config (or a saved config.json's values): every builder argument it holds."""
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    arguments = inspect.signature(build_models).parameters
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(config).items() if k in arguments and k != "name"}
    return build_models(config.model, **given)


@torch.no_grad()
def render_samples(generator: nn.Module, noise: torch.Tensor) -> torch.Tensor:
    generator.eval()
    device = next(generator.parameters()).device
    return torch.cat([generator(chunk.to(device)).float().cpu() for chunk in noise.split(SAMPLE_CHUNK)])


def adversarial_step(
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
) -> int:
    """`critic_steps` critic updates, then one generator update, each over `grad_accum`
    micro-batches; returns how many optimizer steps the fp16 GradScaler skipped."""

    def sync_unless_last(model: nn.Module, micro: int):
        # Under DDP, all-reduce gradients only on the last micro-batch of an accumulated step.
        return accelerator.no_sync(model) if micro < grad_accum - 1 else contextlib.nullcontext()

    skipped = 0
    generator.train()
    critic.requires_grad_(True)
    for _ in range(critic_steps):
        for micro in range(grad_accum):
            real = next_real()
            with torch.no_grad():
                fake = generator(latents())
            with sync_unless_last(critic, micro):
                loss, stats = objective.critic_loss(critic, real, fake)
                accelerator.backward(loss / grad_accum)
            record(stats)
        d_opt.step()
        skipped += d_opt.step_was_skipped
        d_opt.zero_grad(set_to_none=True)

    # Frozen, the critic's weights get no gradients from the generator's loss (and DDP expects none).
    critic.requires_grad_(False)
    for micro in range(grad_accum):
        with sync_unless_last(generator, micro):
            loss, stats = objective.generator_loss(critic, generator(latents()))
            accelerator.backward(loss / grad_accum)
        record(stats)
    g_opt.step()
    skipped += g_opt.step_was_skipped
    g_opt.zero_grad(set_to_none=True)
    return skipped


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
    spec = parse_data_spec(config.data)

    generator, critic = build_networks(config)
    # From here torch's global generator (injected noise, dropout) differs per rank; Accelerate
    # saves and restores it per rank with each checkpoint.
    torch.manual_seed(stream_seed(config.seed, rank, 2))
    ema = GeneratorEMA(generator, config.ema_decay, device=device)
    if config.sync_bn and world > 1 and device.type == "cuda":
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
    g_opt = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    d_opt = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=config.betas)
    generator, critic, g_opt, d_opt = accelerator.prepare(generator, critic, g_opt, d_opt)

    noise_rng = torch.Generator(device=device).manual_seed(stream_seed(config.seed, rank, 0))
    stream = open_stream(
        spec,
        resolution=config.resolution,
        batch_size=config.batch_size,
        seed=config.seed,
        rank=rank,
        world_size=world,
        workers=config.workers,
        split=config.split,
        image_column=config.image_column,
        celeba_crop=config.celeba_crop,
        hflip=config.hflip,
        shuffle_buffer=config.shuffle_buffer,
        pin_memory=device.type == "cuda",
    )
    objective = make_objective(config, accelerator.scaler, noise_rng)
    window = StatWindow()
    eval_noise = fixed_noise(config)
    modes, std = toy_modes(spec.name) if spec.is_points else (None, 0.0)

    fid = None
    if config.fid_every:
        try:
            fid = FIDEvaluator(
                accelerator,
                data=config.data,
                split=config.split,
                image_column=config.image_column,
                resolution=config.resolution,
                celeba_crop=config.celeba_crop,
                num_samples=config.fid_samples,
                batch_size=config.batch_size,
                cache_dir=Path(config.fid_cache).expanduser(),
                seed=config.seed,
                weights_path=config.fid_weights,
                shuffle_buffer=config.shuffle_buffer,
            )
        except FIDUnavailable as error:  # a long run is worth more than its FID curve
            if accelerator.is_main_process:
                print(f"error: {error}; training continues with FID disabled", file=sys.stderr)
    monitor = CollapseMonitor(collapse_thresholds(config), critic_key=config.collapse_critic_key)
    start_step, skipped, run_id = 0, 0, new_run_id()
    collapsed, end = False, RunEnd("finished", config.max_steps)
    resumed = resuming(config)
    if resumed:
        rank_state, ema_state = load_checkpoint(accelerator, latest_checkpoint(out))
        ema.load_state_dict(ema_state)
        start_step = int(rank_state["step"])
        if "noise_rng" in rank_state:
            noise_rng.set_state(rank_state["noise_rng"])
            stream.load_state_dict(rank_state["data"])
            window.load_state_dict(rank_state["window"], device)
            skipped = int(rank_state.get("skipped", 0))
            objective.load_state_dict(rank_state.get("objective", {}))
            run_id = rank_state.get("wandb_run_id", run_id)
            monitor.load_state_dict(rank_state.get("monitor", monitor.state_dict()))
        accelerator.print(f"resumed from step {start_step}")
    if accelerator.is_main_process:
        save_config(config, out)
    reporter.start(
        resume_step=start_step if resumed else None,
        run_id=run_id,
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
        return torch.randn(config.batch_size, config.latent_dim, device=device, generator=noise_rng)

    last_real = None

    def next_real() -> torch.Tensor:
        nonlocal data_wait, last_real
        waited = time.perf_counter()
        batch = next(stream)
        data_wait += time.perf_counter() - waited
        last_real = to_model_input(batch, device)
        return last_real

    real_per_step = config.batch_size * config.critic_steps * config.grad_accum * world
    progress = tqdm(
        total=config.max_steps, initial=start_step, unit="step", disable=not accelerator.is_main_process
    )
    window_start, window_steps, data_wait = time.perf_counter(), 0, 0.0
    for step in range(start_step + 1, config.max_steps + 1):
        skipped += adversarial_step(
            accelerator, generator, critic, g_opt, d_opt, objective, next_real, latents,
            config.critic_steps, config.grad_accum, window.add,
        )
        ema.update(accelerator.unwrap_model(generator))
        window_steps += 1
        progress.update()

        last = step == config.max_steps
        if step % config.log_every == 0 or last:
            means = window.means(accelerator)
            counters = stream.counters()
            if counters:  # rows read and skipped, summed over ranks: every rank takes the same decision
                totals = accelerator.reduce(torch.tensor(list(counters.values()), device=device), reduction="sum")
                counters = dict(zip(counters, totals.tolist()))
                check_skipped(spec, counters["data_read"], counters["data_skipped"])
            elapsed = time.perf_counter() - window_start
            record = {
                "step": step,
                **means,
                "img_per_s": real_per_step * window_steps / elapsed,
                "data_wait_frac": data_wait / elapsed,
                "lr": config.lr,
                "skipped_steps": skipped,
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
        if config.stop_on_collapse and collapsed:
            end = RunEnd("collapsed", step, "collapse alarm (--stop-on-collapse)")
        elif stop_reason and not last:
            end = RunEnd("stopped", step, stop_reason)
        stopping = end.status != "finished"
        if step % config.ckpt_every == 0 or last or stopping:
            rank_state = {
                "step": step,
                "noise_rng": noise_rng.get_state(),
                "data": stream.state_dict(),
                "window": window.state_dict(),
                "skipped": skipped,
                "objective": objective.state_dict(),
                "monitor": monitor.state_dict(),
                "wandb_run_id": run_id,
            }
            save_checkpoint(accelerator, out, step, rank_state, ema.state_dict(), config.keep_checkpoints)
        if stopping:
            accelerator.print(f"stopped at step {step}: {end.reason}; checkpoint saved")
            break
    progress.close()
    reporter.finish(step, resumable=end.status == "stopped")

    # Release the DDP-wrapped models before the process group goes: otherwise gloo can abort at exit.
    del generator, critic, g_opt, d_opt
    accelerator.free_memory()
    accelerator.end_training()
    return end
