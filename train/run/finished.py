"""A run read back from its --out folder: its configuration, checkpoints and EMA generator, for
the tools that use a trained generator (generate.py, evaluate.py) without the training loop."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import SafetensorError
from torch import nn

from train.data import DataOptions, parse_data_spec, toy_modes
from train.run.checkpoint import (
    EMA_FILE,
    list_checkpoints,
    load_ema_weights,
)
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

    def ema_generator(self, checkpoint: Path | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, Path]:
        """The EMA generator of `checkpoint`, else of the newest checkpoint whose EMA file is whole
        (a damaged one is named on stderr and passed over, as resume does); and the checkpoint used."""
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

