"""The Hugging Face hub as a place for finished generators: `--run hf:USER/NAME` read through the
hub's cache (snapshot_download), and a published folder uploaded (create_repo, upload_folder).

Every failure to reach the hub is one line that names the way out, never a traceback: the hub is
often unreachable on compute nodes. The token is huggingface_hub's own business (HF_TOKEN or
`hf auth login`): nothing here reads, passes or prints it.
"""
from pathlib import Path

from train.run.finished import PUBLISHED_WEIGHTS, RunNotFound

HUB_PREFIX = "hf:"
# What a tool needs from a published folder (train/run/published.py); the card and its picture are
# for people, and a 1024 px grid is megabytes a compute node has no use for.
NEEDED_FILES = ["config.json", PUBLISHED_WEIGHTS]


class HubUnavailable(RunNotFound):
    """The hub could not answer (no network, HF_HUB_OFFLINE, an outage) or refused (no such model, no
    access); the message names the repository and the way out."""


def is_hub_run(run: Path | str) -> bool:
    return str(run).startswith(HUB_PREFIX)


def hub_repo_id(text: str, given: str) -> str:
    """USER/NAME, checked as the hub checks repository names; HubUnavailable (bad input) otherwise,
    naming the flag and value as `given` ("--to alice")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as error:
        raise HubUnavailable(f"{given}: not a hub repository name ({str(error).splitlines()[0]})") from None
    if text.count("/") != 1:  # the hub would put a bare NAME under the token's user: the card could not name it
        raise HubUnavailable(f"{given}: name the repository as USER/NAME (or ORGANISATION/NAME)")
    return text


def local_run(run: Path | str) -> Path:
    """`run` itself, or for `hf:USER/NAME` the folder of its newest revision in the hub's cache,
    downloaded there first when the hub is reachable (HF_HUB_OFFLINE=1: the cached copy only)."""
    if not is_hub_run(run):
        return Path(run)
    import httpx
    from huggingface_hub import snapshot_download

    repo_id = hub_repo_id(str(run).removeprefix(HUB_PREFIX), f"--run {run}")
    _limit_connect_time()
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=NEEDED_FILES, library_name="facegan"))
    except (OSError, httpx.HTTPError) as error:  # huggingface_hub's own (HfHubHTTPError, LocalEntryNotFoundError) among them
        raise HubUnavailable(f"--run {run}: {_download_problem(error)}") from None
    missing = [name for name in NEEDED_FILES if not (folder / name).is_file()]
    if missing:
        raise HubUnavailable(f"--run {run}: the repository holds no {' or '.join(missing)}, so no facegan generator;"
                             " publish a run there with `python -m train.publish`")
    return folder


def _download_problem(error: Exception) -> str:
    """Why snapshot_download found nothing to return, and what to do, in one clause."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    cache = constants.HF_HUB_CACHE
    if isinstance(error, RepositoryNotFoundError):  # gated and private ones too: the hub does not say which
        return ("no such model on the hub, or one you have no access to; check the name, or log in"
                " (`hf auth login` or HF_TOKEN) as a user who can read it")
    if isinstance(error, IncompleteSnapshotError):
        return f"the cached copy in {cache} is incomplete and the hub cannot be reached; connect once to complete it"
    if isinstance(error, LocalEntryNotFoundError) and constants.is_offline_mode():
        return (f"HF_HUB_OFFLINE is set and no copy is cached in {cache}; unset HF_HUB_OFFLINE to download it,"
                " or point HF_HUB_CACHE at a cache that holds it")
    if isinstance(error, (LocalEntryNotFoundError, httpx.TransportError, OSError)):  # no connection, a timeout
        cause = error.__cause__ or error
        return (f"the Hugging Face hub at {constants.ENDPOINT} cannot be reached ({_first_line(cause)}) and no copy is"
                f" cached in {cache}; check the connection or HF_ENDPOINT, or download it once where the hub is"
                " reachable and copy the cache (HF_HUB_CACHE) here")
    return f"the hub could not be read ({_first_line(error)})"


def upload(folder: Path, repo_id: str, private: bool, message: str) -> str:
    """Create `repo_id` (kept if it exists) and commit `folder`'s files to it; the commit's URL.
    HubUnavailable, naming the way out, when the hub cannot be reached or refuses."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    # An HfApi of this call, not the module's create_repo / upload_folder: theirs took HF_ENDPOINT
    # when huggingface_hub was imported.
    api = HfApi(library_name="facegan")
    _limit_connect_time()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, repo_type="model")
    except OfflineModeIsEnabled:
        raise HubUnavailable("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or write the folder"
                             " without uploading: --dry-run --output FOLDER") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise HubUnavailable(f"--to {repo_id}: the hub refused the upload ({status}); log in (`hf auth login` or HF_TOKEN)"
                                 " with a token that can write there") from None
        raise HubUnavailable(f"--to {repo_id}: the hub answered {_first_line(error)}; nothing was uploaded") from None
    except (httpx.TransportError, OSError) as error:  # no connection, a timeout; ConnectionError
        raise HubUnavailable(
            f"--to {repo_id}: the Hugging Face hub at {api.endpoint} cannot be reached ({_first_line(error)}), so nothing"
            " was uploaded; check the connection or HF_ENDPOINT, or write the folder without uploading: --dry-run --output FOLDER"
        ) from None
    return commit.commit_url


def _limit_connect_time() -> None:
    """huggingface_hub's shared client waits for a connection without limit (timeout=None): behind a
    firewall that drops packets a tool would hang in silence. A connect limit of HF_HUB_ETAG_TIMEOUT
    seconds (the library's own for metadata calls, 10 by default) turns that into the error line;
    reads stay unbounded, as an upload of a large generator needs."""
    import httpx
    from huggingface_hub import constants, get_session

    get_session().timeout = httpx.Timeout(None, connect=constants.HF_HUB_ETAG_TIMEOUT)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
