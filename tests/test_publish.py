"""train/publish.py and `--run hf:USER/NAME`: the folder a run publishes (weights, config, card),
read back through huggingface_hub's real cache code, and the one-line errors without the hub.

No test reaches the network: the endpoint is a local port that refuses connections, or
HF_HUB_OFFLINE is on. huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_CACHE once,
when it is imported; the tests set its `constants` as those variables would have (its code then
runs unchanged), and HF_TOKEN, which it reads at each call, in the environment.
"""
import hashlib
import json
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, constants, scan_cache_dir
from PIL import Image
from safetensors import safe_open

from tests.conftest import tool_in_process
from train.publish import main
from train.run.config import DEBUG_PRESET
from train.run.finished import PUBLISHED_WEIGHTS, FinishedRun
from train.run.networks import render_samples
from train.run.published import LOCAL_SETTINGS

REPO = "alice/tiny-gan"
SECRET = "hf_facegan_test_token_never_written"  # HF_TOKEN throughout: it must turn up nowhere
FILES = {"README.md", "config.json", PUBLISHED_WEIGHTS, "samples.png"}


@pytest.fixture(scope="module")
def published(wgangp_run, tmp_path_factory):
    """`--dry-run --output` of the session's wgangp run, with HF_TOKEN set and the hub offline (any
    request would fail the run): the folder and what the command printed."""
    folder = tmp_path_factory.mktemp("publish") / "tiny-gan"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", SECRET)
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        result = _publish("--run", str(wgangp_run), "--to", REPO, "--dry-run", "--output", str(folder))
    assert result.returncode == 0, result.stderr
    return folder, result


def _publish(*args: str):
    from tests.conftest import in_process

    return in_process("train/publish.py", args, lambda: main(list(args)))


@pytest.fixture
def unreachable_hub(monkeypatch):
    """The hub's endpoint at a local port bound but never listening: every connection refused at
    once, here and on a machine with internet alike (no timeout to wait out)."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{bound.getsockname()[1]}")
        yield constants.ENDPOINT


def place_in_hub_cache(folder: Path, cache: Path, repo_id: str) -> Path:
    """`folder`'s files as snapshot_download leaves a downloaded revision (huggingface_hub's
    file_download.py): models--USER--NAME/blobs/ holds each file under its hash, snapshots/<commit>/
    a relative symlink to it under the file's name, refs/main the commit. The snapshot folder."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        blob = hashlib.sha256(file.read_bytes()).hexdigest()  # an LFS file's name; the cache only links to it
        (storage / "blobs" / blob).write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def test_a_dry_run_writes_the_folder_to_upload_and_uploads_nothing(published):
    folder, result = published
    assert {p.name for p in folder.iterdir()} == FILES
    assert result.stdout.strip() == (f"wrote the EMA generator of step 40 to {folder} as it would be uploaded to {REPO};"
                                     " nothing was uploaded (--dry-run)")


def test_the_card_parses_as_the_hubs_model_card_with_its_metadata_settings_and_picture(published):
    folder, _ = published
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "facegan" and card.data.pipeline_tag == "unconditional-image-generation"
    assert {"gan", "wgan-gp", "safetensors"} <= set(card.data.tags)
    assert card.data.license == "other" and card.data.license_name == "training-data-terms"
    assert "## Licence" in card.text and "## Training settings" in card.text
    assert "| `model` | `dcgan` |" in card.text and "| `max_steps` | `40` |" in card.text
    assert "no FID/KID or Stacked MNIST scores" in card.text  # --debug runs have --fid-every 0
    assert "](samples.png)" in card.text and f"--run hf:{REPO}" in card.text
    side, count = DEBUG_PRESET["resolution"], DEBUG_PRESET["num_samples"]  # a 4x4 grid, 2 px apart
    with Image.open(folder / "samples.png") as picture:
        assert picture.format == "PNG" and picture.size == (4 * (side + 2) + 2,) * 2 and count == 16


def test_the_published_config_rebuilds_the_generator_that_draws_the_runs_ema_samples(published, wgangp_run):
    folder, _ = published
    with safe_open(folder / PUBLISHED_WEIGHTS, "pt") as weights:
        names, metadata = weights.keys(), weights.metadata()
    assert metadata["step"] == "40" and not any(name.startswith("module.") for name in names)  # the generator's own
    settings = json.loads((folder / "config.json").read_text())
    assert settings["trainer"] == "train/wgangp.py" and not set(LOCAL_SETTINGS) & set(settings)
    assert str(wgangp_run) not in (folder / "config.json").read_text()  # the run's --out stays home
    latents = torch.randn(8, DEBUG_PRESET["latent_dim"], generator=torch.Generator().manual_seed(5))
    (republished, used), (original, _) = FinishedRun(folder).ema_generator(), FinishedRun(wgangp_run).ema_generator()
    assert used == folder / PUBLISHED_WEIGHTS
    assert torch.equal(render_samples(republished, latents), render_samples(original, latents))


def test_a_torn_published_weights_file_is_one_error_line(published, tmp_path):
    folder = tmp_path / "tiny-gan"
    shutil.copytree(published[0], folder)
    weights = folder / PUBLISHED_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    draw = tool_in_process("train/generate.py", "--run", str(folder), "--n", "4", "--output", str(tmp_path / "grid.png"))
    assert draw.returncode == 2 and draw.stderr.startswith(f"error: --run {folder}: {weights} cannot be read as its generator")
    assert len(draw.stderr.splitlines()) == 1 and not (tmp_path / "grid.png").exists()


def test_the_card_carries_the_last_scores_logged_at_or_before_the_published_step(wgangp_run, tmp_path):
    run = tmp_path / "run"  # what publishing reads of a run: its config, one checkpoint's EMA, its metrics
    (run / "checkpoints" / "step_000020").mkdir(parents=True)
    shutil.copy(wgangp_run / "config.json", run)
    shutil.copy(wgangp_run / "checkpoints" / "step_000020" / "ema.safetensors", run / "checkpoints" / "step_000020")
    records = [{"step": 10, "fid": 81.5, "kid_mean": 0.07, "kid_std": 0.01, "fid_samples": 500}, {"step": 30, "fid": 60.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert _publish("--run", str(run), "--to", REPO, "--dry-run", "--output", str(tmp_path / "out")).returncode == 0
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("fid", 81.5), ("kid", 0.07)]
    assert "at step 10 on 500 samples" in card.text and "generator at step 20," in card.text


def test_generate_reads_a_published_model_through_the_hubs_cache_offline(published, wgangp_run, tmp_path, monkeypatch):
    folder, _ = published
    cache = tmp_path / "hub"
    snapshot = place_in_hub_cache(folder, cache, REPO)
    cached = scan_cache_dir(cache)  # huggingface_hub's own check of the layout
    assert not cached.warnings and [r.repo_id for r in cached.repos] == [REPO]
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # snapshot_download answers from the cache alone
    from_hub = tool_in_process("train/generate.py", "--run", f"hf:{REPO}", "--n", "8", "--output", str(tmp_path / "hub.npy"))
    assert from_hub.returncode == 0, from_hub.stderr
    assert FinishedRun(f"hf:{REPO}").path.resolve() == snapshot.resolve()
    local = tool_in_process("train/generate.py", "--run", str(wgangp_run), "--n", "8", "--output", str(tmp_path / "run.npy"))
    assert local.returncode == 0, local.stderr
    assert np.array_equal(np.load(tmp_path / "hub.npy"), np.load(tmp_path / "run.npy"))
    assert SECRET not in from_hub.stdout + from_hub.stderr


def test_without_the_hub_publish_and_generate_say_so_in_one_line_naming_the_way_out(wgangp_run, tmp_path, unreachable_hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    upload = _publish("--run", str(wgangp_run), "--to", REPO)
    assert upload.returncode == 2 and len(upload.stderr.splitlines()) == 1, upload.stderr
    assert re.fullmatch(  # the cause as httpx words it (the errno's text is the platform's)
        rf"error: --to {REPO}: the Hugging Face hub at {re.escape(unreachable_hub)} cannot be reached \(ConnectError: .*refused\),"
        r" so nothing was uploaded; check the connection or HF_ENDPOINT, or write the folder without uploading: --dry-run --output FOLDER\n",
        upload.stderr,
    )
    draw = tool_in_process("train/generate.py", "--run", f"hf:{REPO}", "--output", str(tmp_path / "grid.png"))
    assert draw.returncode == 2 and len(draw.stderr.splitlines()) == 1, draw.stderr
    assert draw.stderr.startswith(f"error: --run hf:{REPO}: the Hugging Face hub at {unreachable_hub} cannot be reached")
    assert "check the connection or HF_ENDPOINT" in draw.stderr and not (tmp_path / "grid.png").exists()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = [_publish("--run", str(wgangp_run), "--to", REPO),
               tool_in_process("train/generate.py", "--run", f"hf:{REPO}", "--output", str(tmp_path / "grid.png"))]
    assert [r.stderr.splitlines() for r in offline] == [
        ["error: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or write the folder without uploading: --dry-run --output FOLDER"],
        [(f"error: --run hf:{REPO}: HF_HUB_OFFLINE is set and no copy is cached in {tmp_path / 'empty-cache'}; unset HF_HUB_OFFLINE"
          " to download it, or point HF_HUB_CACHE at a cache that holds it")],
    ]
    assert all(SECRET not in r.stdout + r.stderr for r in [upload, draw, *offline])


def test_the_token_is_written_nowhere_in_the_folder(published):
    folder, result = published
    assert all(SECRET.encode() not in file.read_bytes() for file in folder.iterdir())
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--to", "alice"], "error: --to alice: name the repository as USER/NAME (or ORGANISATION/NAME)"),
        (["--to", "alice/bad name"], "error: --to alice/bad name: not a hub repository name"),
        (["--to", REPO, "--output", "{occupied}"], "error: --output {occupied}: holds files already; choose a new or empty folder"),
        (["--to", REPO, "--dry-run"], "--dry-run: name the folder to write with --output FOLDER"),
    ],
)
def test_bad_names_and_outputs_are_refused_before_anything_is_written(wgangp_run, tmp_path, args, message):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    args = [a.format(occupied=occupied) for a in args]
    result = _publish("--run", str(wgangp_run), *args)
    assert result.returncode == 2 and message.format(occupied=occupied) in result.stderr.splitlines()[-1]
    assert [p.name for p in tmp_path.rglob("*")] == ["occupied", "notes.txt"]
