"""Collapse and divergence signals from the logged losses and the fixed-noise samples.

Pure bookkeeping: the loop feeds it each log line's means and each sample grid, and decides what
to do with the warnings (log them, alert W&B, stop the run). Each signal warns once when it
starts and re-arms once it clears, so a collapse that lasts 10,000 steps is one warning, not 200.
"""
import math
from dataclasses import dataclass

import torch


@dataclass
class CollapseThresholds:
    """When each signal fires; a loss_floor, flat_tolerance or diversity_drop of 0 turns it off."""

    # Debug traces (40 steps, log every 5): WGAN-GP d_loss -4.5 .. -30, FastGAN d_loss (hinge +
    # reconstruction) 2.08 .. 2.44, hinge 1.64 .. 1.91. WGAN-GP's d_loss, -wdist + penalty, does
    # cross 0 on its way down, so one line near 0 means nothing: `patience` lines in a row do.
    loss_floor: float = 1e-3
    patience: int = 5
    # A log line is a mean over `log_every` steps of a noisy minibatch loss; a live game moves it
    # by far more than 1e-3 over 20 lines (smallest step between adjacent debug lines: 0.0085).
    flat_window: int = 20
    flat_tolerance: float = 1e-3
    # Both debug runs' sample diversity only grew (WGAN-GP 51.2 -> 51.7, FastGAN 26.0 -> 54.1);
    # a generator that maps every latent to a few outputs loses most of it, not a few per cent.
    diversity_drop: float = 0.5

    def __post_init__(self) -> None:
        for name in ("patience", "flat_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)}: must be at least 1")
        for name in ("loss_floor", "flat_tolerance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)}: must be 0 or more")
        if not 0.0 <= self.diversity_drop < 1.0:
            raise ValueError(f"diversity_drop {self.diversity_drop}: must be in [0, 1)")


def mean_pairwise_distance(samples: torch.Tensor) -> float:
    """Mean L2 distance between all pairs of flattened samples (N >= 2)."""
    if len(samples) < 2:
        raise ValueError(f"mean_pairwise_distance needs at least 2 samples, got {len(samples)}")
    return torch.pdist(samples.detach().flatten(1).double().cpu()).mean().item()


class CollapseMonitor:
    """`critic_key` names the statistic that sits near 0 when the critic wins outright: `d_loss`
    for WGAN-GP; for the FastGAN objective `hinge`, since its d_loss adds the decoders'
    reconstruction loss, which stays well above 0 whoever wins."""

    def __init__(self, thresholds: CollapseThresholds, critic_key: str = "d_loss", generator_key: str = "g_loss"):
        self.thresholds = thresholds
        self.critic_key = critic_key
        self.generator_key = generator_key
        self.near_zero_lines = 0
        self.generator_window: list[float] = []
        self.max_diversity = 0.0
        self.max_diversity_step = 0
        self.active: dict[str, bool] = {"non_finite": False, "critic_near_zero": False, "generator_flat": False,
                                        "diversity": False, "samples_non_finite": False}

    def _episode(self, signal: str, firing: bool) -> bool:
        """True only when `signal` starts firing; it re-arms once it stops."""
        started = firing and not self.active[signal]
        self.active[signal] = firing
        return started

    def observe_losses(self, record: dict[str, float]) -> list[str]:
        """One log line: its `step` and the means of the window (any other keys are checked for
        non-finite values too). Returns the warnings that start at this line."""
        t, step, warnings = self.thresholds, int(record["step"]), []
        bad = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not math.isfinite(v)}
        if self._episode("non_finite", bool(bad)):
            values = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
            warnings.append(f"divergence: non-finite {values} at step {step}")

        if self.critic_key in record:
            critic = record[self.critic_key]
            self.near_zero_lines = self.near_zero_lines + 1 if abs(critic) < t.loss_floor else 0
            if self._episode("critic_near_zero", self.near_zero_lines >= t.patience):
                warnings.append(
                    f"collapse: {self.critic_key} ~ 0 (|{self.critic_key}| < {t.loss_floor:g}, last {critic:.3g})"
                    f" for {self.near_zero_lines} log lines up to step {step}"
                )

        if self.generator_key in record:
            generator = record[self.generator_key]
            if math.isfinite(generator):
                self.generator_window = (self.generator_window + [generator])[-t.flat_window:]
            else:  # a NaN is the divergence warning's; flatness starts over after it
                self.generator_window = []
            full = len(self.generator_window) == t.flat_window
            spread = max(self.generator_window) - min(self.generator_window) if full else math.inf
            if self._episode("generator_flat", spread < t.flat_tolerance):
                warnings.append(
                    f"collapse: {self.generator_key} flat (range {spread:.3g} < {t.flat_tolerance:g}, around"
                    f" {generator:.4g}) over {t.flat_window} log lines up to step {step}"
                )
        return warnings

    def observe_samples(self, step: int, samples: torch.Tensor) -> list[str]:
        """The EMA generator's fixed-noise samples (N, ...) at `step`; returns the warnings that start."""
        diversity = mean_pairwise_distance(samples)
        warnings = []
        if self._episode("samples_non_finite", not math.isfinite(diversity)):
            warnings.append(f"divergence: non-finite samples at step {step}")
        if not math.isfinite(diversity):
            return warnings
        if diversity > self.max_diversity:
            self.max_diversity, self.max_diversity_step = diversity, step
        floor = self.thresholds.diversity_drop * self.max_diversity
        if self._episode("diversity", diversity < floor):
            warnings.append(
                f"collapse: sample diversity (mean pairwise distance) {diversity:.4g} < {self.thresholds.diversity_drop:g}"
                f" x its maximum {self.max_diversity:.4g} (step {self.max_diversity_step}) at step {step}"
            )
        return warnings

    def state_dict(self) -> dict:
        """Plain Python values: saved in a rank's train state, loadable with weights_only=True."""
        return {
            "near_zero_lines": self.near_zero_lines,
            "generator_window": list(self.generator_window),
            "max_diversity": self.max_diversity,
            "max_diversity_step": self.max_diversity_step,
            "active": dict(self.active),
        }

    def load_state_dict(self, state: dict) -> None:
        self.near_zero_lines = int(state["near_zero_lines"])
        self.generator_window = [float(v) for v in state["generator_window"]][-self.thresholds.flat_window:]
        self.max_diversity = float(state["max_diversity"])
        self.max_diversity_step = int(state["max_diversity_step"])
        self.active.update({k: bool(v) for k, v in state["active"].items()})
