"""A run read back from its --out folder: its configuration, checkpoints and EMA generator, for
the tools that use a trained generator (generate.py, evaluate.py) without the training loop."""
import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from train.data import DataOptions, parse_data_spec, toy_modes
from train.run.checkpoint import checkpoint_step, latest_checkpoint, load_ema_weights
from train.run.ema import ema_generator_weights
from train.run.networks import build_networks


class RunNotFound(ValueError):
    """--run names no finished run (no config.json, no checkpoint); the message says what to do."""


class FinishedRun:
    def __init__(self, run: Path):
        self.path = Path(run)
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise RunNotFound(f"--run {run}: no config.json there; point --run at a training run's --out folder")
        self.config = SimpleNamespace(**json.loads(config_path.read_text()))

    @property
    def is_points(self) -> bool:
        return self.config.data.startswith("toy:")

    def modes(self) -> tuple[torch.Tensor | None, float]:
        """The toy data's mode centres and spread, for scatter plots; (None, 0) for images."""
        return toy_modes(self.config.data.removeprefix("toy:")) if self.is_points else (None, 0.0)

    def data_options(self, **overrides) -> DataOptions:
        """The run's real images as it read them; `overrides` (data, split, image_column) name others."""
        config = {**vars(self.config), **{k: v for k, v in overrides.items() if v is not None}}
        return DataOptions(
            spec=parse_data_spec(config["data"]),
            resolution=config["resolution"],
            split=config["split"],
            image_column=config["image_column"],
            celeba_crop=config["celeba_crop"],
            shuffle_buffer=config["shuffle_buffer"],
            background=tuple(config.get("alpha_background", (255, 255, 255))),
        ).reference()

    def checkpoint(self, chosen: Path | None = None) -> Path:
        checkpoint = chosen or latest_checkpoint(self.path)
        if checkpoint is None:
            raise RunNotFound(f"--run {self.path}: no checkpoint in {self.path / 'checkpoints'}; train longer or pass --checkpoint")
        return Path(checkpoint)

    def ema_generator(self, checkpoint: Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
        generator, _ = build_networks(self.config)
        generator.load_state_dict(ema_generator_weights(load_ema_weights(self.checkpoint(checkpoint))))
        return generator.to(device)

    def step(self, checkpoint: Path | None = None) -> int | None:
        return checkpoint_step(self.checkpoint(checkpoint))
