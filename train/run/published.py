"""A published generator's folder: what train/publish.py uploads to the hub, and what FinishedRun
reads back (from a folder, or through the hub's cache as `--run hf:USER/NAME`).

    model.safetensors  the EMA generator's own state dict (FinishedRun's PUBLISHED_WEIGHTS)
    config.json        the run's settings as the run saved them, less the machine's own (below):
                       the recipe's config, from which build_networks rebuilds the generator
    samples.png        the generator's samples from the run's fixed latents
    README.md          the model card (train/report/card.py)

Nothing in it is a pickle: the weights are safetensors, the rest text and a PNG.
"""
import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from train.common.atomic import atomic_write, atomic_write_text
from train.report.card import CardFacts, last_scores, model_card
from train.report.metrics import METRICS_FILE, read_metrics
from train.report.samples import samples_picture, save_png
from train.run.checkpoint import checkpoint_step
from train.run.config import TrainConfig
from train.run.finished import PUBLISHED_WEIGHTS, FinishedRun
from train.run.networks import fixed_noise, render_samples
from train.run.resolve import TRAINER_KEY, trainer_script

CONFIG_FILE, CARD_FILE, PICTURE_FILE = "config.json", "README.md", "samples.png"
# Settings that say where and how one machine ran the run, not what the model is: they hold local
# paths and account names, so they stay home, and read back at their defaults.
LOCAL_SETTINGS = (
    "out", "resume", "time_limit", "profile", "fid_cache", "fid_weights",
    "wandb_project", "wandb_entity", "wandb_name", "wandb_tags", "wandb_mode",
)
# The card's grid is at most about this many pixels across (the hub shows it scaled down anyway):
# 64 samples up to 256 px, 16 at 512 px, 4 at 1024 px.
CARD_PICTURE_SIDE = 2048


def published_settings(config: TrainConfig) -> dict[str, Any]:
    """config.json as save_config writes it (the trainer first), less LOCAL_SETTINGS."""
    settings = {TRAINER_KEY: trainer_script(type(config)), **dataclasses.asdict(config)}
    return {name: value for name, value in settings.items() if name not in LOCAL_SETTINGS}


def card_samples(config: TrainConfig) -> int:
    """Samples in the card's picture: the run's grid, fewer where its images are large."""
    return min(config.num_samples, max(4, (CARD_PICTURE_SIDE // config.resolution) ** 2))


def write_published(finished: FinishedRun, folder: Path, repo_id: str, license: str, checkpoint: Path | None = None) -> int | None:
    """Write the folder for `repo_id` from `checkpoint`'s EMA generator (default: the newest whole
    one) into `folder`; the step its weights are from (None for a folder published before)."""
    generator, used = finished.ema_generator(checkpoint)
    step, config = checkpoint_step(used), finished.config
    weights = {name: tensor.detach().contiguous().cpu() for name, tensor in generator.state_dict().items()}
    metadata = {"format": "pt", "step": str(step)}  # "pt": what transformers-style loaders expect of the header
    atomic_write(folder / PUBLISHED_WEIGHTS, lambda tmp: save_file(weights, tmp, metadata=metadata))
    settings = published_settings(config)
    atomic_write_text(folder / CONFIG_FILE, json.dumps(settings, indent=2) + "\n")
    count = card_samples(config)
    samples = render_samples(generator, fixed_noise(count, config.latent_dim, config.seed))
    save_png(samples_picture(samples, *finished.modes()), folder / PICTURE_FILE)
    metrics = finished.path / METRICS_FILE
    scores = last_scores(read_metrics(metrics) if metrics.is_file() else [], step)
    facts = CardFacts(repo_id, config, settings, step, scores, PICTURE_FILE, count, license)
    atomic_write_text(folder / CARD_FILE, str(model_card(facts)))
    return step
