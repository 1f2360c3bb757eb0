"""A trainer's own step, built by train.run.build as the training loop builds it, on one process
with a fixed real batch: what the benchmarks time. The set-up is never copied here, so a change to
the trainer's networks, optimizers or precision reaches every benchmark."""
from typing import Callable, Sequence

import torch
from accelerate.state import AcceleratorState

from train.run.build import ObjectiveFactory, build_training, make_accelerator
from train.run.config import TrainConfig
from train.run.phases import Phases

# The real batch, made on the run's device with the given generator.
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
    """The trainer's step over one fixed real batch; `compile_modules` names "generator" and/or
    "critic" for torch.compile; `scaler` replaces the run's fp16 GradScaler (a scale chosen to overflow)."""
    AcceleratorState._reset_state(reset_partial_state=True)  # one process, a new precision per call
    accelerator = make_accelerator(config)
    if scaler is not None:
        accelerator.scaler = scaler
    training = build_training(config, accelerator, make_objective, compile_modules, compile_backend)
    real = real_batch(config, accelerator.device, torch.Generator(device=accelerator.device).manual_seed(config.seed))
    return training.phases(lambda: real)
