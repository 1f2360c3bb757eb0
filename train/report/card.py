"""The model card of a published generator: the README.md the hub shows, YAML metadata (library,
tags, dataset, licence, scores as model-index) over what the run was trained on and how, its last
scores and a picture of its samples. Built with huggingface_hub's ModelCard, which the hub parses.
"""
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from train.run.evaluation import STACKED_MNIST_PREFIX

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

    from train.run.config import TrainConfig

TRAINER_TAGS = {"train/wgangp.py": "wgan-gp", "train/dcgan.py": "dcgan", "train/lightweight_gan.py": "lightweight-gan"}
TASK = "unconditional-image-generation"  # the hub's pipeline tag for a generator of images from noise
# metrics.jsonl's score keys (train/run/evaluation.py) -> (model-index metric type, the card's name).
SCORE_NAMES = {
    "fid": ("fid", "FID"),
    "kid_mean": ("kid", "KID"),
    f"{STACKED_MNIST_PREFIX}modes": ("modes", "Stacked MNIST modes covered (of 1,000)"),
    f"{STACKED_MNIST_PREFIX}kl": ("kl", "Stacked MNIST KL to uniform modes (nats)"),
    f"{STACKED_MNIST_PREFIX}frechet": ("frechet", "Stacked MNIST Fréchet distance (classifier features)"),
}
SAMPLE_KEYS = ("fid_samples", f"{STACKED_MNIST_PREFIX}samples")


@dataclasses.dataclass(frozen=True)
class Scores:
    """One evaluation from metrics.jsonl: its step, its scores by key, the samples it compared."""

    step: int
    values: dict[str, float]
    samples: int | None


def last_scores(records: list[dict], step: int | None) -> Scores | None:
    """The newest record with FID/KID or Stacked MNIST scores at or before `step` (the published
    weights'): scores logged after it judged weights that are not the ones published."""
    for record in reversed(records):
        values = {key: record[key] for key in (*SCORE_NAMES, "kid_std") if record.get(key) is not None}
        if values and (step is None or record["step"] <= step):
            samples = next((record[key] for key in SAMPLE_KEYS if key in record), None)
            return Scores(record["step"], values, samples)
    return None


@dataclasses.dataclass(frozen=True)
class CardFacts:
    """What the card says of one published generator."""

    repo_id: str
    config: "TrainConfig"
    settings: dict[str, Any]  # the published config.json
    step: int | None
    scores: Scores | None
    picture: str  # the sample picture's file name, beside the card
    picture_samples: int
    license: str


def hub_dataset(config: "TrainConfig") -> str | None:
    kind, _, name = config.data.partition(":")
    return name if kind == "hf" and name else None


def model_card(facts: CardFacts) -> "ModelCard":
    from huggingface_hub import ModelCard

    metadata = card_metadata(facts).to_yaml()
    body = "\n\n".join(part for part in (_intro(facts), _usage(facts), _scores(facts), _settings(facts), _licence(facts)) if part)
    return ModelCard(f"---\n{metadata}\n---\n\n{body}\n")


def card_metadata(facts: CardFacts):
    """The YAML header the hub indexes: library, task, tags, dataset, licence, scores."""
    from huggingface_hub import EvalResult, ModelCardData

    config, dataset = facts.config, hub_dataset(facts.config)
    trainer = facts.settings.get("trainer", "")
    task = None if config.data.startswith("toy:") else TASK  # 2-D points are no images
    tags = ["facegan", "gan", *([task] if task else []), *([TRAINER_TAGS[trainer]] if trainer in TRAINER_TAGS else []),
            "pytorch", "safetensors"]
    licence = {"license": facts.license}
    if facts.license == "other":  # the weights inherit their training data's terms (below)
        licence.update(license_name="training-data-terms", **({"license_link": f"https://huggingface.co/datasets/{dataset}"} if dataset else {}))
    results = [
        EvalResult(task_type=TASK, dataset_type=dataset or config.data, dataset_name=dataset or config.data,
                   dataset_split=config.split, metric_type=SCORE_NAMES[key][0], metric_name=SCORE_NAMES[key][1], metric_value=value)
        for key, value in (facts.scores.values.items() if facts.scores else ()) if key in SCORE_NAMES
    ]
    return ModelCardData(
        library_name="facegan", pipeline_tag=task, tags=tags, datasets=[dataset] if dataset else None,
        model_name=facts.repo_id.split("/")[-1] if results else None, eval_results=results or None, **licence,
    )


def _intro(facts: CardFacts) -> str:
    config, trainer = facts.config, facts.settings.get("trainer", "a facegan recipe")
    at_step = f" at step {facts.step:,}" if facts.step is not None else ""
    kind = "2-D points" if config.data.startswith("toy:") else f"{config.resolution}x{config.resolution} px images"
    return (
        f"# {facts.repo_id.split('/')[-1]}\n\n"
        f"The exponential moving average (EMA) of a GAN generator{at_step}, trained with facegan's"
        f" `{trainer}` on `{config.data}`: a `{config.model}` generator that maps {config.latent_dim}-d standard normal"
        f" noise to {kind}.\n\n"
        f"![{facts.picture_samples} samples of the generator, from the run's fixed latents (seed {config.seed})]({facts.picture})"
    )


def _usage(facts: CardFacts) -> str:
    run = f"hf:{facts.repo_id}"
    return (
        "## Use\n\nWith facegan installed (the weights are `model.safetensors`, the network's settings `config.json`):\n\n"
        f"```bash\npython train/generate.py --run {run} --output samples.png --n 64\n"
        f"python train/evaluate.py --run {run}\n```\n\n"
        f"```python\nfrom train.run.finished import FinishedRun\n\ngenerator, _ = FinishedRun(\"{run}\").ema_generator()\n```"
    )


def _scores(facts: CardFacts) -> str:
    if facts.scores is None:
        return "## Scores\n\nThe run's metrics.jsonl held no FID/KID or Stacked MNIST scores for these weights."
    scores = facts.scores
    on = f" on {scores.samples:,} samples" if scores.samples else ""
    rows = [f"| {SCORE_NAMES[key][1]} | {_number(value)}{_spread(key, scores.values)} |"
            for key, value in scores.values.items() if key in SCORE_NAMES]
    return f"## Scores\n\nThe last evaluation in the run's metrics, at step {scores.step:,}{on}:\n\n| Score | Value |\n|---|---|\n" + "\n".join(rows)


def _spread(key: str, values: dict[str, float]) -> str:
    return f" ± {_number(values['kid_std'])}" if key == "kid_mean" and "kid_std" in values else ""


def _settings(facts: CardFacts) -> str:
    """The data, the settings that shape the network, and every other one the run changed from its
    recipe's defaults; config.json holds them all."""
    defaults, always = dataclasses.asdict(type(facts.config)()), ("trainer", "data", *facts.config.architecture_fields)
    shown = [name for name, value in facts.settings.items() if name in always or value != defaults.get(name)]
    rows = "\n".join(f"| `{name}` | `{_cell(facts.settings[name])}` |" for name in shown)
    return f"## Training settings\n\nThe network's shape and what the run changed from the recipe's defaults (every setting: `config.json`):\n\n| Setting | Value |\n|---|---|\n{rows}"


def _licence(facts: CardFacts) -> str:
    config, dataset = facts.config, hub_dataset(facts.config)
    if config.data == "synthetic" or config.data.startswith("toy:"):
        source = f"facegan's own generated data (`{config.data}`), which carries no third-party terms"
    else:
        source = f"[{dataset}](https://huggingface.co/datasets/{dataset})" if dataset else f"`{config.data}`"
        source += ", whose terms apply to them and to what they generate"
    celeba = " CelebA and CelebA-HQ (facegan's default data) are for non-commercial research only." if "celeba" in config.data.lower() else ""
    return (f"## Licence\n\nThe code that trained it is MIT-licensed. The weights were learnt from {source}.{celeba}"
            " Check the data's licence before you use this model.")


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}"


def _cell(value: Any) -> str:
    return json.dumps(value).replace("|", "\\|") if not isinstance(value, str) else value.replace("|", "\\|")
