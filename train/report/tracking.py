"""Weights & Biases through Accelerate's tracker: what the dashboard shows, from the main process only.

Accelerate owns the run (`Accelerator(log_with="wandb")`, `init_trackers`, `accelerator.log`);
images, videos and alerts go through the wandb run it holds. Other ranks never build images.
"""
import netrc
import os
import re
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator
    from PIL import Image

WANDB_MODES = ("online", "offline", "disabled")
# The older names wandb still takes for $WANDB_MODE (wandb_settings.Settings.mode).
WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}
SECRET_NAMES = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
REDACTED = "<redacted>"


def has_wandb_key(environ: Mapping[str, str] = os.environ) -> bool:
    """A W&B API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    if environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_finds_credentials(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether wandb.init online would find credentials without asking for them: wandb's own lookup
    (its key variable or identity-token file, else the .netrc entry for its server, as `wandb
    login` or `wandb login --host` writes it). Without them, it fails seconds into a run
    ("No API key configured"), or waits at a prompt on a terminal. ValueError: a key is stored
    there, in a shape wandb refuses."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.errors import AuthenticationError
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib.wbauth import read_netrc_auth
    except ImportError:  # moved in another wandb version: the simpler look of has_wandb_key
        return has_wandb_key(environ)
    try:
        return read_netrc_auth(host=wandb_setup.singleton().settings.base_url) is not None
    except AuthenticationError as error:  # a stored key of a shape wandb refuses
        raise ValueError(str(error)) from None


def resolve_wandb_mode(requested: str | None, environ: Mapping[str, str] = os.environ) -> tuple[str, str | None]:
    """(mode, a one-line hint for the user or None): the flag, else $WANDB_MODE, else online with a
    key and offline without one. An empty $WANDB_MODE counts as unset; train/run/environment.py has
    removed it from os.environ by now, since wandb reads the variable itself and refuses ''."""
    if requested:
        return requested, None
    from_env = environ.get("WANDB_MODE") or None
    from_env = WANDB_MODE_ALIASES.get(from_env, from_env)
    if from_env in WANDB_MODES:
        return from_env, None
    if has_wandb_key(environ):
        return "online", None
    return "offline", "wandb: no API key found, logging offline; upload later with `wandb sync {dir}/wandb/offline-run-*`"


def redact_secrets(values: dict[str, Any]) -> dict[str, Any]:
    """The values with every string that holds a secret from the environment (a variable whose
    name says KEY, TOKEN, SECRET...) replaced: a flag or path must not carry a key to the dashboard."""
    secrets = [v for k, v in os.environ.items() if SECRET_NAMES.search(k) and len(v) >= 8]

    def clean(value: Any) -> Any:
        if isinstance(value, str) and any(secret in value for secret in secrets):
            return REDACTED
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return {k: clean(v) for k, v in values.items()}


class WandbRun:
    """The main process's handle on the W&B run Accelerate started; every method is a no-op elsewhere."""

    def __init__(self, accelerator: "Accelerator", enabled: bool):
        self.accelerator = accelerator
        self.enabled = enabled and accelerator.is_main_process

    @staticmethod
    def log_with(mode: str) -> str | None:
        return None if mode == "disabled" else "wandb"

    def start(
        self,
        *,
        project: str,
        config: dict[str, Any],
        out: Path,
        run_id: str,
        mode: str,
        entity: str | None,
        name: str | None,
        tags: tuple[str, ...],
    ) -> None:
        if not self.enabled:
            return
        init = {
            "id": run_id,
            "resume": "allow",  # a resumed run continues the same W&B run, steps still increasing
            "mode": mode,
            "dir": str(out),
            "entity": entity,
            "name": redact_secrets({"name": name or out.name})["name"],
            "tags": list(tags),
        }
        self.accelerator.init_trackers(project, config=redact_secrets(config), init_kwargs={"wandb": init})

    @property
    def run(self):
        return self.accelerator.get_tracker("wandb", unwrap=True)

    def log(self, values: dict[str, Any], step: int) -> None:
        if self.enabled:
            self.accelerator.log(values, step=step)

    def log_images(self, images: dict[str, "Image.Image"], step: int) -> None:
        if self.enabled:
            import wandb

            self.run.log({k: wandb.Image(v) for k, v in images.items()}, step=step)

    def log_video(self, key: str, path: Path, step: int) -> None:
        if self.enabled and path.is_file():
            import wandb

            self.run.log({key: wandb.Video(str(path), format=path.suffix.lstrip("."))}, step=step)

    def mark_preempting(self) -> None:
        """The run stopped early and will be resumed: W&B shows it as preempted, not crashed or finished."""
        if self.enabled:
            self.run.mark_preempting()

    def alert(self, title: str, text: str) -> None:
        if self.enabled:
            import wandb

            self.run.alert(title=title, text=text, level=wandb.AlertLevel.WARN)


def new_run_id() -> str:
    """Eight lowercase letters and digits, the shape of wandb's own ids (without importing wandb)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
