"""train/report/stacked_mnist.py: the digit classifier, the mode counts and KL, the Fréchet distance,
and a stacked-mnist run judged end to end: in the loop at --fid-every (train/run/evaluation.py), by
train/evaluate.py and by train/generate.py."""
import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import completed
from train.data.stacked_mnist import stacked_images, stacked_indices
from train.report import stacked_mnist
from train.report.metrics import read_metrics
from train.report.stacked_mnist import (
    MIN_ACCURACY,
    frechet_distance,
    load_classifier,
    mode_scores,
    real_floor,
    reference_statistics,
    score,
)


@pytest.fixture(scope="session")
def classifier(classifier_cache):
    return load_classifier(classifier_cache)


def test_the_classifier_reaches_97_percent_on_its_held_out_digits_and_is_trained_once(classifier_cache, monkeypatch):
    (cached,) = classifier_cache.glob("digit-classifier-*.safetensors")
    from safetensors import safe_open

    with safe_open(cached, framework="pt") as f:
        assert float(f.metadata()["accuracy"]) >= MIN_ACCURACY
    monkeypatch.setattr(stacked_mnist, "train_classifier", lambda *a: pytest.fail("trained again despite the cache"))
    mtime = cached.stat().st_mtime_ns
    load_classifier(classifier_cache)
    assert cached.stat().st_mtime_ns == mtime


def test_a_uniform_histogram_has_zero_kl_and_all_1000_modes():
    assert mode_scores(torch.arange(1000).repeat(3)) == {"modes": 1000.0, "kl": 0.0}


def test_a_single_mode_has_kl_ln_1000():
    scores = mode_scores(torch.full((50,), 417))
    assert scores["modes"] == 1.0 and scores["kl"] == pytest.approx(math.log(1000))


def test_kl_of_a_hand_computed_histogram():
    # p = (1/2, 1/4, 1/4): sum p ln(1000 p) = 1/2 ln 500 + 1/2 ln 250
    scores = mode_scores(torch.tensor([7, 7, 8, 9]))
    assert scores["modes"] == 3.0 and scores["kl"] == pytest.approx(0.5 * math.log(500) + 0.5 * math.log(250))


def test_frechet_distance_is_zero_at_the_reference_and_the_mean_gap_squared_when_shifted():
    torch.manual_seed(0)
    features = torch.randn(4000, 3, dtype=torch.float64)
    reference = stacked_mnist.Reference(features.mean(0), torch.cov(features.T))
    assert frechet_distance(features, reference) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(features + torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64), reference) == pytest.approx(5.0)


def test_real_samples_cover_every_mode_evenly_and_one_repeated_image_collapses(classifier):
    reference = reference_statistics(classifier)
    floor = real_floor(classifier, 5000, reference)
    assert floor["modes"] >= 990 and floor["kl"] < 0.25 and floor["frechet"] < 5.0  # 5 per mode: KL ~0.1 by chance
    one = stacked_images(torch.tensor([[0, 1000, 4999]] * 64))  # a 0, a 2 and a 9
    collapsed = score(one, classifier, reference)
    assert collapsed["modes"] == 1.0 and collapsed["kl"] == pytest.approx(math.log(1000))
    assert collapsed["frechet"] > 50 * floor["frechet"]
    # floats in [-1, 1] score as the uint8 images they stand for
    real = stacked_images(stacked_indices(200, torch.Generator().manual_seed(3)))
    assert score(real.float() / 127.5 - 1, classifier, reference) == score(real, classifier, reference)


def test_a_stacked_mnist_run_is_judged_by_modes_kl_and_frechet_distance(classifier_cache, run, tmp_path, monkeypatch):
    """4 DCGAN steps, then evaluate.py (the classifier from the session's cache) and generate.py's .npy."""
    out = tmp_path / "run"
    monkeypatch.setenv("XDG_CACHE_HOME", str(classifier_cache.parents[1]))
    completed(run(
        "train/dcgan.py", "--data", "stacked-mnist", "--resolution", "32", "--max-steps", "4", "--batch-size", "16",
        "--channel-max", "32", "--fid-every", "0", "--wandb-mode", "disabled", "--workers", "0", "--out", str(out),
    ))
    result = completed(run("train/evaluate.py", "--run", str(out), "--samples", "500"))
    assert "digit classifier held-out accuracy" not in result.stdout  # read from the cache, not trained again
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["step"] == 4 and scores["samples"] == 500
    assert 1 <= scores["modes"] < scores["real_modes"] <= 1000
    assert scores["kl"] > scores["real_kl"] >= 0 and scores["frechet"] > scores["real_frechet"] > 0
    completed(run("train/generate.py", "--run", str(out), "--n", "70", "--output", str(tmp_path / "s.npy")))
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (70, 3, 32, 32) and samples.dtype == np.uint8


def test_a_stacked_mnist_run_logs_its_modes_kl_and_frechet_at_each_evaluation_as_evaluate_py_scores_them(
    classifier_cache, run, tmp_path, monkeypatch
):
    """5 steps of Metz et al.'s networks (--networks metz-quarter), evaluated every 2 steps and at the last:
    the classifier's scores of the EMA generator, not FID, under sm_ names with their sample count."""
    out = tmp_path / "run"
    monkeypatch.setenv("XDG_CACHE_HOME", str(classifier_cache.parents[1]))
    result = completed(run(
        "train/dcgan.py", "--data", "stacked-mnist", "--networks", "metz-quarter", "--max-steps", "5", "--batch-size", "16",
        "--fid-every", "2", "--fid-samples", "200", "--log-every", "5", "--wandb-mode", "disabled", "--workers", "0",
        "--out", str(out),
    ))
    assert "digit classifier held-out accuracy" not in result.stdout  # read from the cache, not trained again
    records = read_metrics(out / "metrics.jsonl")
    scored = [r for r in records if "sm_modes" in r]
    assert [r["step"] for r in scored] == [2, 4, 5]
    assert not any("fid" in r for r in records)
    for r in scored:
        assert set(r) == {"step", "sm_modes", "sm_kl", "sm_frechet", "sm_samples"} and r["sm_samples"] == 200
        assert r["sm_modes"] == int(r["sm_modes"]) and 1 <= r["sm_modes"] <= 200  # at most one mode per sample
        assert 0 <= r["sm_kl"] <= math.log(1000) + 1e-9 and 0 < r["sm_frechet"] < math.inf
    scores = json.loads(completed(run("train/evaluate.py", "--run", str(out), "--samples", "200")).stdout.strip().splitlines()[-1])
    assert scores["step"] == 5
    assert {k: scores[k] for k in ("modes", "kl", "frechet")} == pytest.approx(
        {k: scored[-1][f"sm_{k}"] for k in ("modes", "kl", "frechet")}, rel=1e-5
    )
