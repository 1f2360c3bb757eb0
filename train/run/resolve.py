"""One run's configuration from its sources, lowest first: the recipe's defaults, the --debug
preset, the toy-data preset, the presets a chosen flag value brings (`choice_presets`: --networks),
the run's saved config.json (with --resume), then the flags given.

config.json is read back into the recipe's own dataclass: each value checked against its field's
type and its flag's declaration (choices, limits), so a hand-edited file fails with the line to fix.
"""
import dataclasses
import inspect
import json
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from train.common.atomic import atomic_write_text
from train.run.checkpoint import latest_checkpoint
from train.run.checks import check_config
from train.run.flags import ConfigError, build_parser, choice_problem, described_type, fits, limit_problem, typed
from train.run.zero import ZeroRefused, check_zero, zero_from_environment

if TYPE_CHECKING:
    from train.run.config import TrainConfig

Config = TypeVar("Config", bound="TrainConfig")

# How this invocation runs, not what the run is: never taken from a resumed run's config.json.
SESSION_FIELDS = ("resume", "time_limit", "profile")
# config.json's one entry that is not a flag: the recipe script that made the run.
TRAINER_KEY = "trainer"
REPAIR = "config.json holds the run's settings and the checkpoints its weights"


def resolve_config(config_cls: type[Config], given: dict[str, Any]) -> Config:
    """Merge defaults, presets, a resumed run's saved config and the given flags; then check it."""
    values = dataclasses.asdict(config_cls())
    given = {**_zero_from_launcher(given), **given}
    out = Path(given.get("out", values["out"] if not given.get("debug") else config_cls.debug_preset["out"]))
    if _continues(given.get("resume", "no"), out):
        saved = _saved_config(config_cls, out)
        if given.get("debug") and not saved.get("debug"):  # the preset would be ignored: the run's settings win
            raise ConfigError(
                f"--debug: the run in {out} was not made with --debug, and --resume continues it with its own"
                " settings; drop --debug"
            )
        if "deepspeed" in given and given["deepspeed"] != saved.get("deepspeed"):
            raise ConfigError(_checkpoint_kind_differs(out, given["deepspeed"], saved.get("deepspeed")))
        # --augment too: the objective's state in each checkpoint (ADA's p) follows it.
        for name in (*config_cls.architecture_fields, "augment"):
            was = saved.get(name, config_cls.__dataclass_fields__[name].default)  # a run from before the field: its default
            if name in given and _plain(given[name]) != _plain(was):
                raise ConfigError(
                    f"--{name.replace('_', '-')} {given[name]} differs from the run in {out} ({_plain(was)});"
                    " drop the flag to resume, or start a new run in another --out"
                )
        values.update({k: v for k, v in saved.items() if k not in SESSION_FIELDS})
    else:
        if given.get("debug"):
            values.update(config_cls.debug_preset)
        if given.get("data", values["data"]).startswith("toy:"):  # the toy preset; check_config judges the name
            values.update({k: v for k, v in config_cls.toy_preset.items() if k in values})
        for name, presets in config_cls.choice_presets.items():  # the value chosen, else the default's own
            values.update(presets.get(given.get(name, values[name]), {}))
    values.update(given)
    config = config_cls(**{name: typed(value) for name, value in values.items()})  # argparse gives lists
    check_config(config)
    return config


def _zero_from_launcher(given: dict[str, Any]) -> dict[str, Any]:
    """--deepspeed and --gradient-clipping from an `accelerate launch` DeepSpeed config, where the
    flags are not given: the launcher's choice counts as given (a resumed run's config.json does not
    override it)."""
    try:  # the launcher's own settings first (stage, offload, "auto" clipping); the precision with the flags
        check_zero(None, "no", use_cpu=False)
    except ZeroRefused as error:
        raise ConfigError(str(error)) from None
    stage, clipping = zero_from_environment()
    if stage is None:
        return {}
    return {name: value for name, value in (("deepspeed", stage), ("gradient_clipping", clipping)) if name not in given}


def _checkpoint_kind_differs(out: Path, asked: int | None, saved: int | None) -> str:
    """A resume whose DeepSpeed setting is not the run's: DDP checkpoints hold model.safetensors and
    optimizer.bin, DeepSpeed ones each engine's partitioned states, and neither loads the other."""
    def described(stage: int | None) -> str:
        return f"DeepSpeed ZeRO-{stage}" if stage else "DDP (no DeepSpeed)"

    flag = f"--deepspeed {asked}" if asked is not None else "no --deepspeed"
    return (
        f"{flag}: the run in {out} was trained with {described(saved)} and its checkpoints load only that way"
        f" (not with {described(asked)}); resume it as it was made (the same --deepspeed, or the same accelerate"
        " config), or start a new run in another --out"
    )


def load_config(config_cls: type[Config], argv: Sequence[str] | None, description: str) -> Config:
    given = vars(build_parser(config_cls, description).parse_args(argv))
    return resolve_config(config_cls, given)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def trainer_script(config_cls: type["TrainConfig"]) -> str:
    """The recipe script a config class is defined in, from the repository's root: train/wgangp.py."""
    try:
        path = Path(inspect.getfile(config_cls))
    except (TypeError, OSError):  # defined at a prompt
        return config_cls.__qualname__
    return f"{path.parent.name}/{path.name}"


def _saved_config(config_cls: type["TrainConfig"], out: Path) -> dict[str, Any]:
    """A resumed run's config.json, refused when hand-editing broke it or another trainer made it."""
    path = out / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume: {out} holds no run (no config.json); start without --resume")
    saved = read_config_json(path, "--resume")
    trainer, made_by = trainer_script(config_cls), saved.pop(TRAINER_KEY, None)
    if made_by is not None and made_by != trainer:
        raise ConfigError(f"--resume: the run in {out} was made by {made_by}; resume it with that script, not {trainer}")
    models = next(f for f in dataclasses.fields(config_cls) if f.name == "model").metadata["choices"]
    if made_by is None and saved.get("model", models[0]) not in models:  # a run saved before the trainer was
        raise ConfigError(
            f"--resume: the run in {out} was made by another trainer (its model, {saved['model']!r}, is not one of"
            f" {trainer}'s: {', '.join(models)}); resume it with the script that made it"
        )
    return saved_values(config_cls, saved, path, "--resume")


def read_config_json(path: Path, flag: str) -> dict[str, Any]:
    """config.json's {"setting": value} object; ConfigError, prefixed with `flag`, if it is not one."""
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{flag}: {path} is not valid JSON at {json_error_place(error)}; repair that line ({REPAIR})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{flag}: {path} is not text; restore it from a copy ({REPAIR})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{flag}: {path} holds no {{\"setting\": value, ...}} object; restore it from a copy ({REPAIR})")
    return saved


def json_error_place(error: json.JSONDecodeError) -> str:
    """"line 3, column 12 (Expecting value)": where the JSON breaks, and why. Some of json's reasons
    end in "at", meant to be followed by the place ("Unterminated string starting at")."""
    reason = error.msg[: -len(" at")] + " there" if error.msg.endswith(" at") else error.msg
    return f"line {error.lineno}, column {error.colno} ({reason})"


def saved_values(config_cls: type["TrainConfig"], saved: dict[str, Any], path: Path, flag: str) -> dict[str, Any]:
    """config.json's settings, each held to its field's type and its flag's declaration (choices,
    limits) as the flag would be; as the fields hold them (tuples for JSON's lists)."""
    fields, hints = {f.name: f for f in dataclasses.fields(config_cls)}, typing.get_type_hints(config_cls)
    values = {}
    for name, value in saved.items():
        if name not in fields:
            raise ConfigError(f"{flag}: {path}: {name!r} is no setting of {trainer_script(config_cls)}; delete that line")
        if not fits(value, hints[name]):
            problem = f" is not {described_type(hints[name])}"
        else:
            values[name] = typed(value)
            choice, limit = choice_problem(fields[name], values[name]), limit_problem(fields[name], values[name])
            problem = f" is {choice}" if choice else f": {limit}" if limit else ""  # the latter as the flag says it
        if problem:
            raise ConfigError(f"{flag}: {path}: \"{name}\": {json.dumps(value)}{problem}; fix that line ({REPAIR})")
    return values


def read_run_config(config_cls: type[Config], path: Path, flag: str) -> Config:
    """A run's config.json as its recipe's dataclass (missing settings at their defaults, as an
    older run's are); no check of the run's folder or environment."""
    saved = read_config_json(path, flag)
    saved.pop(TRAINER_KEY, None)
    return config_cls(**saved_values(config_cls, saved, path, flag))


def resuming(config: "TrainConfig") -> bool:
    """Whether this run continues from a checkpoint: --resume, or --resume auto with one in --out."""
    return _continues(config.resume, Path(config.out))


def _continues(resume: str, out: Path) -> bool:
    return resume == "yes" or (resume == "auto" and latest_checkpoint(out) is not None)


def save_config(config: "TrainConfig", out: Path) -> None:
    """config.json: every flag's value, and which recipe made the run (--resume checks it)."""
    saved = {TRAINER_KEY: trainer_script(type(config)), **dataclasses.asdict(config)}
    atomic_write_text(out / "config.json", json.dumps(saved, indent=2) + "\n")
