"""Unrolled discriminator (Metz et al. 2017): the generator's loss is taken against the
discriminator after k further updates, so the generator is judged by where the discriminator is
heading, not where it stands; that is what keeps it from hopping between modes.

- exact: the k updates are differentiable (`torch.func.functional_call` on parameter tensors,
  `create_graph=True`), and the generator's gradient flows through them, as in the paper.
- look-ahead (first order): the k updates on a copy without a graph; the generator's gradient
  is taken against the copy only. Cheaper: no second derivatives, no k stored graphs.

The k updates are Adam steps with the discriminator's learning rate and betas, from zero moments.
Under DDP their gradients are averaged over ranks (differentiably in the exact form), so every rank
unrolls to the same discriminator the single-process run on the whole batch would.
"""
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce
from torch.func import functional_call

ADAM_EPS = 1e-8  # torch.optim.Adam's default
CriticLoss = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class Unrolling:
    steps: int
    lr: float
    betas: tuple[float, float]
    exact: bool = True

    def critic_after(
        self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, critic_loss: CriticLoss
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The critic after `steps` updates on (real, fake), as a function of its input."""
        module = critic.module if isinstance(critic, nn.parallel.DistributedDataParallel) else critic
        params = {name: p.detach().clone().requires_grad_(True) for name, p in module.named_parameters()}
        buffers = {name: b.clone() for name, b in module.named_buffers()}  # BatchNorm's running stats stay put
        first = {name: torch.zeros_like(p) for name, p in params.items()}
        second = {name: torch.zeros_like(p) for name, p in params.items()}
        beta1, beta2 = self.betas
        fake = fake if self.exact else fake.detach()
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        for t in range(1, self.steps + 1):
            current = params

            def call(x: torch.Tensor, current=current) -> torch.Tensor:
                return functional_call(module, (current, buffers), (x,))

            with torch.enable_grad():
                loss, _ = critic_loss(call, real, fake)
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=self.exact)
            if distributed:
                world = dist.get_world_size()
                if self.exact:
                    grads = [differentiable_all_reduce(g) / world for g in grads]
                else:
                    for g in grads:
                        dist.all_reduce(g)
                    grads = [g / world for g in grads]
            updated = {}
            for (name, p), g in zip(params.items(), grads):
                first[name] = beta1 * first[name] + (1 - beta1) * g
                second[name] = beta2 * second[name] + (1 - beta2) * g * g
                # The clamp: a zero gradient (a dead unit) would put sqrt's infinite slope at 0 into the
                # exact form's backward; 1e-30 moves Adam's denominator by at most 1e-15 against its eps 1e-8.
                second_hat = (second[name] / (1 - beta2**t)).clamp(min=1e-30)
                step = self.lr * (first[name] / (1 - beta1**t)) / (second_hat.sqrt() + ADAM_EPS)
                updated[name] = p - step if self.exact else (p - step).detach().requires_grad_(True)
            params = updated
        final = params if self.exact else {name: p.detach() for name, p in params.items()}
        return lambda x: functional_call(module, (final, buffers), (x,))
