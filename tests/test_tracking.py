"""train/report/tracking.py with wandb really imported, offline, no network: what a run leaves in W&B."""
import json

import pytest

from tests.conftest import completed
from tests.wandb_records import offline_runs, read_run
from train.report.metrics import read_metrics
from train.report.tracking import (
    REDACTED,
    redact_secrets,
    resolve_wandb_mode,
    wandb_finds_credentials,
)

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B key; never valid



def test_mode_defaults_to_offline_with_a_hint_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    mode, hint = resolve_wandb_mode(None)
    assert mode == "offline" and "wandb sync" in hint
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_wandb_mode(None) == ("online", None)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode(None) == ("disabled", None)
    assert resolve_wandb_mode("offline") == ("offline", None)  # the flag wins


def test_netrc_login_counts_as_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_wandb_mode(None) == ("online", None)


def test_online_credentials_are_looked_for_as_wandb_looks_for_them(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not wandb_finds_credentials()
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")  # what `wandb login` writes
    netrc.chmod(0o600)
    assert wandb_finds_credentials()
    netrc.write_text("machine api.wandb.ai\n  login user\n  password short\n")
    with pytest.raises(ValueError, match="40"):  # a stored key of a shape wandb refuses
        wandb_finds_credentials()


def test_secrets_from_the_environment_are_redacted_wherever_they_appear(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    values = {"out": f"runs/{FAKE_KEY}", "data": "hf:org/set", "tags": ["a", "hf_abcdefghijklmnop"], "lr": 1e-4}
    assert redact_secrets(values) == {"out": REDACTED, "data": "hf:org/set", "tags": ["a", REDACTED], "lr": 1e-4}


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """A debug run logged offline, interrupted at step 3 and resumed to step 6, with a W&B key (and
    one inside a flag value) in the environment. In-process: W&B's own service process writes the
    offline run, as it does for a trainer process."""
    from tests.conftest import train_in_process

    out = tmp_path_factory.mktemp("wandb") / f"run-{FAKE_KEY[:12]}"
    common = ["--debug", "--wandb-mode", "offline", "--log-every", "1", "--sample-every", "3", "--ckpt-every", "3"]
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("WANDB_API_KEY", FAKE_KEY)
        environment.setenv("RUN_SECRET_TOKEN", FAKE_KEY[:12])
        first = completed(train_in_process("train/wgangp.py", *common, "--max-steps", "3", "--wandb-tags", "t1", "--out", str(out)))
        second = completed(train_in_process("train/wgangp.py", "--resume", "--max-steps", "6", "--out", str(out)))
    return out, first, second


def test_an_offline_run_holds_every_metric_the_sample_grids_and_the_progress_video(offline_run):
    out, _, _ = offline_run
    runs = offline_runs(out)
    history = [row for run in runs for row in read_run(run)["history"]]
    logged = {row["_step"]: row for row in history}
    for record in read_metrics(out / "metrics.jsonl"):
        for key, value in record.items():
            if key != "step":
                assert logged[record["step"]][key] == pytest.approx(value), key
    assert logged[3]["samples._type"] == "image-file" and logged[3]["real_vs_fake._type"] == "image-file"
    assert logged[6]["progress._type"] == "video-file"
    media = {p.name.split("_")[0] for run in runs for p in (run / "files" / "media").rglob("*.*")}
    assert {"samples", "real", "progress"} <= media
    assert not any(read_run(run)["preempting"] for run in runs)  # only a resumable stop marks it


def test_resume_continues_the_same_wandb_run_with_increasing_steps(offline_run):
    out, _, _ = offline_run
    first, second = (read_run(run) for run in offline_runs(out))
    assert first["run_id"] == second["run_id"]
    assert [r["_step"] for r in first["history"]] == [1, 2, 3]
    assert [r["_step"] for r in second["history"]] == [4, 5, 6]


def test_the_logged_config_holds_no_secret_from_the_environment(offline_run):
    out, _, _ = offline_run
    for run in offline_runs(out):
        config = read_run(run)["config"]
        assert config["gp_weight"] == 10.0 and config["out"] == REDACTED
        assert FAKE_KEY not in json.dumps(config) and FAKE_KEY[:12] not in json.dumps(config)
        for path in run.rglob("*"):
            if path.is_file():
                assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_disabled_mode_writes_nothing_to_wandb_and_still_the_local_mirror(run, tmp_path):
    out = tmp_path / "r"
    completed(run("train/wgangp.py", "--debug", "--max-steps", "4", "--sample-every", "2", "--out", str(out)))
    assert not (out / "wandb").exists()
    for name in ("metrics.jsonl", "progress.gif", "loss.png", "samples/step_000004.png"):
        assert (out / name).is_file(), name


def test_a_run_name_holding_a_secret_is_redacted_too(offline_run):
    out, _, _ = offline_run
    for run in offline_runs(out):
        assert read_run(run)["name"] == REDACTED  # the default name, the --out folder's, holds the token
