"""A run read back from its --out folder: its configuration, checkpoints and EMA generator, for
the tools that use a trained generator (generate.py, evaluate.py) without the training loop. A
published generator (train/publish.py: config.json beside the EMA weights, no checkpoints) reads
the same way, from a folder or from the hub as `hf:USER/NAME` (train/run/hub.py)."""
import dataclasses
import importlib
import json
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from train.data import DataOptions
from train.data.generated import toy_modes
from train.run.checkpoint import (
    EMA_FILE,
    list_checkpoints,
    load_ema_weights,
)
from train.run.config import TrainConfig
from train.run.ema import ema_generator_weights
from train.run.flags import ConfigError
from train.run.networks import build_networks
from train.run.resolve import TRAINER_KEY, read_run_config

# config.json's "trainer" -> its recipe's config class, imported only for the run that needs it. In
# the order a run saved before config.json named its trainer is tried (the first that takes it).
RECIPE_CONFIGS = {
    "train/wgangp.py": "train.wgangp:WGANGPConfig",
    "train/dcgan.py": "train.dcgan:DCGANConfig",
    "train/lightweight_gan.py": "train.lightweight_gan:LightweightGANConfig",
}
# A published folder's EMA generator weights (the generator's own state dict). The hub reads a
# parameter count and the safetensors tag from this name and no other.
PUBLISHED_WEIGHTS = "model.safetensors"


class RunNotFound(ValueError):
    """--run names no finished run (no config.json, no checkpoint); the message says what to do."""


class FinishedRun:
    def __init__(self, run: Path | str):
        # Here, not at the top: hub.py's errors are RunNotFound's kind, so it imports this module.
        from train.run.hub import local_run

        self.path = local_run(run)
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise RunNotFound(f"--run {run}: no config.json there; point --run at a training run's --out folder")
        self.config = read_finished_config(config_path)

    @property
    def is_points(self) -> bool:
        return self.config.data.startswith("toy:")

    def modes(self) -> tuple[torch.Tensor | None, float]:
        """The toy data's mode centres and spread, for scatter plots; (None, 0) for images."""
        return toy_modes(self.config.data.removeprefix("toy:")) if self.is_points else (None, 0.0)

    def data_options(self, **overrides: str | None) -> DataOptions:
        """The run's real images as it read them; `overrides` (data, split, image_column) name others."""
        given = {name: value for name, value in overrides.items() if value is not None}
        return dataclasses.replace(self.config, **given).data_options.reference()

    @property
    def is_published(self) -> bool:
        """A published generator's folder (train/run/published.py), not a training run's --out."""
        return (self.path / PUBLISHED_WEIGHTS).is_file()

    def ema_generator(self, checkpoint: Path | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, Path]:
        """The EMA generator of `checkpoint`, else of the newest checkpoint whose EMA file is whole
        (a damaged one is named on stderr and passed over, as resume does); and the checkpoint used.
        A published folder's is its one weights file (returned in the checkpoint's place)."""
        if checkpoint is None and self.is_published:
            return self._published_generator(device)
        candidates = [Path(checkpoint)] if checkpoint else list_checkpoints(self.path)[::-1]
        if not candidates:
            raise RunNotFound(f"--run {self.path}: no checkpoint in {self.path / 'checkpoints'}; train longer or pass --checkpoint")
        generator, _ = build_networks(self.config)
        for candidate in candidates:
            try:
                generator.load_state_dict(ema_generator_weights(load_ema_weights(candidate)))
            except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as error:  # missing, torn, foreign
                problem = f"{candidate / EMA_FILE} cannot be read ({type(error).__name__}: {str(error).splitlines()[0]})"
                if checkpoint:
                    raise RunNotFound(f"--checkpoint {checkpoint}: {problem}; pass another --checkpoint") from None
                print(f"warning: {problem}; trying the checkpoint before it", file=sys.stderr)
                continue
            return generator.to(device), candidate
        raise RunNotFound(f"--run {self.path}: no checkpoint with a readable {EMA_FILE}; train again or restore one")

    def _published_generator(self, device: str | torch.device) -> tuple[nn.Module, Path]:
        weights = self.path / PUBLISHED_WEIGHTS
        generator, _ = build_networks(self.config)
        try:
            generator.load_state_dict(load_file(weights))
        except (SafetensorError, OSError, RuntimeError) as error:  # torn, or another network's weights
            problem = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            raise RunNotFound(f"--run {self.path}: {weights} cannot be read as its generator ({problem}); publish or download it again") from None
        return generator.to(device), weights


def read_finished_config(path: Path) -> TrainConfig:
    """A run's config.json as the config of the recipe that made it, checked as --resume checks it."""
    try:
        trainer = json.loads(path.read_text()).get(TRAINER_KEY)
    except (ValueError, AttributeError):  # not JSON, not an object: read_run_config names the problem
        trainer = None
    candidates = [RECIPE_CONFIGS[trainer]] if trainer in RECIPE_CONFIGS else list(RECIPE_CONFIGS.values())
    for candidate in candidates:
        module, name = candidate.split(":")
        config_cls = getattr(importlib.import_module(module), name)
        try:
            return read_run_config(config_cls, path, "--run")
        except ConfigError as error:
            problem = error
    raise RunNotFound(str(problem))
