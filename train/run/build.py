"""Building what a rank trains, once, for the training loop and the benchmarks alike: the
Accelerator, the networks (with SyncBN and the EMA), each network's Adam, the update path (DDP or
DeepSpeed ZeRO) and the objective, as one `Training`. A benchmark that times the trainer's step
builds it here too, so a change to the set-up reaches every benchmark."""
import dataclasses
from datetime import timedelta
from typing import Callable, Sequence

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import InitProcessGroupKwargs
from torch import nn

from train.common.seeds import SeedPurpose, stream_seed
from train.gan.ada import AdaController
from train.gan.augmented import augmented
from train.gan.objectives import Objective
from train.run import zero
from train.run.config import TrainConfig, collective_timeout_seconds
from train.run.ema import GeneratorEMA
from train.run.networks import build_networks
from train.run.peers import nccl_errors_to_python
from train.run.performance import adam, configure_backends, memory_format
from train.run.phases import Phases
from train.run.precision import (
    accelerate_precision,
    prepare,
    resolve_mixed_precision,
    use_cpu_fp16,
)
from train.run.updates import DataParallelUpdates, Updates

ObjectiveFactory = Callable[[TrainConfig, "torch.amp.GradScaler | None", torch.Generator], Objective]


def make_accelerator(config: TrainConfig, log_with: str | None = None) -> Accelerator:
    # Without CUDA, Accelerate must be told to use the CPU, or torchrun's ranks never form a group.
    use_cpu = config.runs_on_cpu()
    if not use_cpu:
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its fastest kernels
        nccl_errors_to_python()
    precision = resolve_mixed_precision(config.mixed_precision, use_cpu)
    # Every collective bounded: a rank that stops answering ends the run (train/run/peers.py).
    timeout = timedelta(seconds=collective_timeout_seconds(config))
    if config.deepspeed:
        options = zero.ZeroOptions(config.deepspeed, micro_batch=config.batch_size, grad_accum=config.grad_accum,
                                   gradient_clipping=config.gradient_clipping, precision=precision)
        return Accelerator(**zero.accelerator_options(options, use_cpu, timeout), log_with=log_with)
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=accelerate_precision(precision, use_cpu),
        # Default DDP flags on purpose: static_graph breaks the penalty's double backward.
        kwargs_handlers=[DistributedDataParallelKwargs(static_graph=False), InitProcessGroupKwargs(timeout=timeout)],
        log_with=log_with,
    )
    if accelerator.scaler is None and precision == "fp16":
        use_cpu_fp16(accelerator)
    return accelerator


@dataclasses.dataclass
class Training:
    """What a rank trains: the prepared networks and optimizers, their update path, the generator's
    EMA, the objective and the rank's latent stream."""

    config: TrainConfig
    accelerator: Accelerator
    generator: nn.Module
    critic: nn.Module
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    updates: Updates
    ema: GeneratorEMA
    objective: Objective
    latent_rng: torch.Generator
    # The generator's own module, which DDP, ZeRO's engine and torch.compile wrap without copying: what
    # the EMA follows. accelerator.unwrap_model would find it too, but imports DeepSpeed (half a
    # second of every run's start) only to ask whether the model is one of its engines.
    generator_module: nn.Module
    ada: AdaController | None = None  # ADA's p, stepped by the loop after each step (train/gan/ada.py)

    def latents(self) -> torch.Tensor:
        config = self.config
        return torch.randn(config.batch_size, config.latent_dim, device=self.accelerator.device, generator=self.latent_rng)

    def phases(
        self,
        next_real: Callable[[], torch.Tensor],
        record: Callable[[dict], None] = lambda stats: None,
        perturb: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
        updates: Updates | None = None,
    ) -> Phases:
        """The adversarial step over these networks; `updates` replaces the built ones (a wrapper)."""
        config = self.config
        return Phases(self.generator, self.critic, self.g_opt, self.d_opt, self.objective, updates or self.updates,
                      next_real, self.latents, config.critic_steps, config.grad_accum, record, perturb)


def build_training(
    config: TrainConfig,
    accelerator: Accelerator,
    make_objective: "ObjectiveFactory",
    compile_modules: Sequence[str] = (),
    compile_backend: str = "inductor",
) -> Training:
    """Everything a rank trains, on `accelerator` (whose fp16 GradScaler the objective is given);
    `compile_modules` names "generator" and/or "critic" for torch.compile (the benchmarks)."""
    device, rank = accelerator.device, accelerator.process_index
    generator, critic = build_networks(config)
    memory_format(config.channels_last, generator, critic)
    # From here torch's global generator (injected noise, dropout) differs per rank; Accelerate
    # saves and restores it per rank with each checkpoint.
    torch.manual_seed(stream_seed(config.seed, rank, SeedPurpose.TORCH_GLOBAL))
    ema = GeneratorEMA(generator, config.ema_decay, device=device)
    if config.sync_bn and accelerator.num_processes > 1 and device.type == "cuda":
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
    configure_backends(config.tf32, device)
    generator_module = generator
    if "generator" in compile_modules:
        generator = torch.compile(generator, backend=compile_backend)
    if "critic" in compile_modules:
        critic = torch.compile(critic, backend=compile_backend)
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
    objective, ada = augmented(make_objective(config, scaler, latent_rng), config.augment_options(), latent_rng,
                               reduce=lambda totals: accelerator.reduce(totals, reduction="sum"))
    return Training(config, accelerator, generator, critic, g_opt, d_opt, updates, ema, objective, latent_rng,
                    generator_module, ada)
