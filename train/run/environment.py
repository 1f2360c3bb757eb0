"""The environment variables this toolkit and its libraries read, checked with the flags.

An empty variable counts as unset. Shells, launchers and notebooks write `WANDB_MODE=` to mean
"not set", but wandb (its pydantic settings: "Input should be 'online', 'offline', ..."),
accelerate and datasets read the empty string as a value, some of them seconds into a run. So
`check_environment` first removes the empty variables of the families below from the environment
it is given (os.environ: those libraries read it themselves, and none of them has been imported
yet when the flags are checked), then holds the values left against what their readers accept.
A bad one stops the run with one line naming the variable, the values it takes and the fix, before
anything is written. A secret's value is never printed.
"""
import os
import shlex
from collections.abc import MutableMapping

from train.common import failpoints
from train.common.failpoints import VARIABLE as FAILPOINTS_VARIABLE
from train.report.tracking import (
    WANDB_MODE_ALIASES,
    WANDB_MODES,
    resolve_wandb_mode,
    wandb_finds_credentials,
)
from train.run.precision import PRECISIONS
from train.run.stop import PID_DIR_VARIABLE

# Whose empty variables count as unset: W&B, Hugging Face (hub, datasets), Accelerate, this toolkit.
FAMILIES = ("WANDB_", "HF_", "ACCELERATE_", "FACEGAN_")

# accelerate.utils.str_to_bool, which raises on anything else (parse_flag_from_env).
ACCELERATE_TRUTH = ("1", "0", "true", "false", "yes", "no", "on", "off", "y", "n", "t", "f")
ACCELERATE_FLAGS = (
    "ACCELERATE_USE_CPU",
    "ACCELERATE_DEBUG_MODE",
    "ACCELERATE_CPU_AFFINITY",
    "ACCELERATE_DYNAMO_USE_FULLGRAPH",
    "ACCELERATE_DYNAMO_USE_DYNAMIC",
    "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION",
)
# Compared with "true" by accelerate: any other value, "1" included, silently means off.
ACCELERATE_TRUE_FLAGS = ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")
# huggingface_hub.constants._is_true: 1/on/yes/true are true, anything else silently false.
HF_TRUTH = ("1", "0", "true", "false", "yes", "no", "on", "off")
HF_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class BadEnvironment(ValueError):
    """An environment variable that would break the run; the message names it and the fix."""


def check_environment(
    environ: MutableMapping[str, str] = os.environ, *, wandb_mode: str | None = None, mixed_precision: str | None = None
) -> None:
    """Drop the empty variables of FAMILIES from `environ`, then raise BadEnvironment for a value
    its reader would refuse or misread. `wandb_mode` and `mixed_precision` are the run's flags:
    where a flag decides, the variable it overrides is not read and not judged."""
    for name in [name for name, value in environ.items() if name.startswith(FAMILIES) and not value]:
        del environ[name]
    _check_wandb(environ, wandb_mode)
    for name in HF_FLAGS:
        _choice(environ, name, HF_TRUTH, "not a yes/no value", fold=str.lower)
    _check_accelerate(environ, mixed_precision)
    _check_facegan(environ)


def _check_wandb(environ: MutableMapping[str, str], requested: str | None) -> None:
    if requested == "disabled":  # wandb is never imported: what it would read does not matter
        return
    accepted = WANDB_MODES + tuple(WANDB_MODE_ALIASES)
    _choice(environ, "WANDB_MODE", accepted, "not a W&B mode", shown=WANDB_MODES)
    mode, _ = resolve_wandb_mode(requested, environ)
    key = environ.get("WANDB_API_KEY")
    if mode == "online" and key is None:
        _check_wandb_login(environ, requested)
    if mode == "disabled" or key is None:
        return
    problem = "it starts or ends with whitespace" if key != key.strip() else None  # wandb refuses it in any mode
    if problem is None and mode == "online":
        problem = _api_key_problem(key)
    if problem:
        raise BadEnvironment(
            f"WANDB_API_KEY is set but malformed ({problem}); unset it and run `wandb login`, set it to the key"
            " from https://wandb.ai/authorize, or log offline with --wandb-mode offline"
        )


def _check_wandb_login(environ: MutableMapping[str, str], requested: str | None) -> None:
    """Online without WANDB_API_KEY: the credentials wandb.init would look for, looked for now."""
    fix = "run `wandb login`, set WANDB_API_KEY to the key from https://wandb.ai/authorize, or log offline with --wandb-mode offline"
    try:
        if wandb_finds_credentials(environ):
            return
    except ValueError as error:  # wandb's AuthenticationError: a stored key it would refuse
        raise BadEnvironment(f"the W&B key that `wandb login` stored is malformed ({error}); {fix}") from None
    given = "--wandb-mode online" if requested else f"WANDB_MODE={environ['WANDB_MODE']}" if "WANDB_MODE" in environ else "W&B"
    raise BadEnvironment(f"{given}: no W&B API key found (no WANDB_API_KEY, and no `wandb login` in ~/.netrc); {fix}")


def _api_key_problem(key: str) -> str | None:
    """What wandb would say of the key's format (it refuses it at wandb.init, seconds into a run)."""
    try:  # wandb's own rule: long, prefixed (on-prem) and JWT keys are all its business
        from wandb.sdk.lib.wbauth.validation import check_api_key
    except ImportError:  # moved in another wandb version: wandb.init judges the key itself
        return None
    problem = check_api_key(key)
    return problem.rstrip(".") if problem else None


def _check_accelerate(environ: MutableMapping[str, str], mixed_precision: str | None) -> None:
    if mixed_precision is None:  # the flag wins; without it train/run/precision.py reads the variable
        _choice(environ, "ACCELERATE_MIXED_PRECISION", PRECISIONS, "not a precision this toolkit trains in",
                fix=", or pass --mixed-precision")
    for name in ACCELERATE_FLAGS:
        _choice(environ, name, ACCELERATE_TRUTH, "not a yes/no value accelerate reads", fold=str.lower,
                shown=("1", "0", "true", "false"))
    for name in ACCELERATE_TRUE_FLAGS:
        _choice(environ, name, ("true", "false"), "accelerate reads only true as on", fold=str.lower)
    steps = environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if steps is not None and steps.strip() != "1":
        # Accelerator.backward divides every loss by it, on top of the loop's own --grad-accum.
        raise BadEnvironment(
            f"ACCELERATE_GRADIENT_ACCUMULATION_STEPS={shlex.quote(steps)}: this toolkit accumulates with"
            " --grad-accum, and accelerate would scale the losses a second time; unset it or set it to 1,"
            " and pass --grad-accum N"
        )
    backend = environ.get("ACCELERATE_DYNAMO_BACKEND")
    if backend is not None and backend.lower() != "no":
        # Measured: "torch.compile with aot_autograd does not currently support double backward".
        raise BadEnvironment(
            f"ACCELERATE_DYNAMO_BACKEND={shlex.quote(backend)}: torch.compile cannot take the gradient penalty's"
            " double backward; unset it or set it to no (answer no to dynamo in `accelerate config`)"
        )
    device = environ.get("ACCELERATE_TORCH_DEVICE")
    if device is not None:
        import torch

        try:
            torch.device(device)
        except RuntimeError:
            raise BadEnvironment(
                f"ACCELERATE_TORCH_DEVICE={shlex.quote(device)}: not a torch device; unset it or set it to cpu, cuda"
                " or cuda:N"
            ) from None


def _check_facegan(environ: MutableMapping[str, str]) -> None:
    pid_dir = environ.get(PID_DIR_VARIABLE)
    if pid_dir is not None and os.path.exists(pid_dir) and not os.path.isdir(pid_dir):
        raise BadEnvironment(
            f"{PID_DIR_VARIABLE}={shlex.quote(pid_dir)}: a file, where each rank writes its pid file into a"
            " folder; unset it or point it at a folder (it is made if missing)"
        )
    points = environ.get(FAILPOINTS_VARIABLE)
    if points is None:
        return
    wrong = failpoints.problem(points)
    if wrong:
        raise BadEnvironment(
            f"{FAILPOINTS_VARIABLE}={shlex.quote(points)}: {wrong}; unset it (failpoints are for tests) or set it"
            " to name=value pairs separated by ';', e.g. nonfinite_loss=5:3"
        )


def _choice(
    environ: MutableMapping[str, str],
    name: str,
    accepted: tuple[str, ...],
    what: str,
    *,
    fold=lambda value: value,
    shown: tuple[str, ...] | None = None,
    fix: str = "",
) -> None:
    value = environ.get(name)
    if value is not None and fold(value) not in accepted:
        values = shown or accepted
        listed = ", ".join(values[:-1]) + " or " + values[-1]
        raise BadEnvironment(f"{name}={shlex.quote(value)}: {what}; unset it or set it to {listed}{fix}")
