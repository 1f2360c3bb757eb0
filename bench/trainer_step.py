"""A trainer's own step, set up the way train/run/loop.py sets it up, on one process with a fixed
real batch: what the benchmarks time. One place, so that a change to the trainer's networks,
optimizers or precision reaches every benchmark."""
from typing import Callable, Sequence

import torch
from accelerate.state import AcceleratorState

from train.run.config import TrainConfig
from train.run.loop import ObjectiveFactory, Phases, make_accelerator
from train.run.networks import build_networks
from train.run.performance import adam, configure_backends, memory_format
from train.run.precision import prepare

# The real batch, made on the run's device with the step's generator.
RealBatch = Callable[[TrainConfig, torch.device, torch.Generator], torch.Tensor]


def uniform_images(config: TrainConfig, device: torch.device, rng: torch.Generator) -> torch.Tensor:
    """Images in [-1, 1] (or points, for the toy MLPs), in the run's memory format."""
    if config.model == "mlp":
        return torch.randn(config.batch_size, 2, device=device, generator=rng)
    shape = (config.batch_size, 3, config.resolution, config.resolution)
    real = torch.rand(shape, device=device, generator=rng) * 2 - 1
    return real.contiguous(memory_format=torch.channels_last) if config.channels_last else real


def trainer_phases(
    config: TrainConfig,
    make_objective: ObjectiveFactory,
    real_batch: RealBatch = uniform_images,
    compile_modules: Sequence[str] = (),
    compile_backend: str = "inductor",
    scaler: torch.amp.GradScaler | None = None,
) -> Phases:
    """The networks, memory format, backends, each network's Adam, prepare and the objective, as
    the loop builds them; `compile_modules` names "generator" and/or "critic" for torch.compile;
    `scaler` replaces the run's fp16 GradScaler (a scale chosen to overflow)."""
    AcceleratorState._reset_state(reset_partial_state=True)  # one process, a new precision per call
    accelerator = make_accelerator(config)
    if scaler is not None:
        accelerator.scaler = scaler
    device = accelerator.device
    generator, critic = build_networks(config)
    memory_format(config.channels_last, generator, critic)
    configure_backends(config.tf32, device)
    if "generator" in compile_modules:
        generator = torch.compile(generator, backend=compile_backend)
    if "critic" in compile_modules:
        critic = torch.compile(critic, backend=compile_backend)
    (g_lr, g_betas), (d_lr, d_betas) = config.optimizer_settings()
    g_opt = adam(generator.parameters(), g_lr, g_betas, config.fused_adam, device)
    d_opt = adam(critic.parameters(), d_lr, d_betas, config.fused_adam, device)
    generator, critic, g_opt, d_opt = prepare(accelerator, generator, critic, g_opt, d_opt)
    rng = torch.Generator(device=device).manual_seed(config.seed)
    real = real_batch(config, device, rng)

    def latents() -> torch.Tensor:
        return torch.randn(config.batch_size, config.latent_dim, device=device, generator=rng)

    return Phases(accelerator, generator, critic, g_opt, d_opt, make_objective(config, accelerator.scaler, rng),
                  lambda: real, latents, config.critic_steps, config.grad_accum, lambda stats: None)
