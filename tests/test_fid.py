"""train/report/fid.py and train/evaluate.py: FID/KID plumbing end to end with a tiny feature network in
place of Inception (whose weights cannot be fetched here), the real-statistics cache, two gloo
processes, and the clear errors when the Inception weights are missing."""
import dataclasses
import json
import math
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as fidelity
from accelerate import Accelerator
from torch import nn

import train.report.fid
from tests.conftest import debug_launch, run_in_process_where_possible, train_in_process
from tests.fixtures import unwritable_folder
from train.data import DataOptions, parse_data_spec
from train.evaluate import main as evaluate_main
from train.report.fid import (
    INCEPTION_WEIGHTS,
    URL_INCEPTION_V3,
    FIDEvaluator,
    FIDNotApplicable,
    FIDUnavailable,
    inception_extractor,
)
from train.report.metrics import read_metrics

RESOLUTION, LATENT_DIM = 16, 48
# 200 samples in blocks of 48: five blocks, split 2 + 3 over two ranks, the last one short.
NUM_SAMPLES, BATCH_SIZE = 200, 48


class TinyFeatures(nn.Module):
    """16 features from uint8 images, the input the Inception gets; the same weights in every process."""

    num_features = 16

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2)
        with torch.no_grad():
            weights = torch.Generator().manual_seed(0)
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=weights) * 0.3)
            self.conv.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(images.float() / 127.5 - 1)).mean(dim=(2, 3))


class SyntheticLikeGenerator(nn.Module):
    """Latents -> images from exactly the distribution of `--data synthetic` (uniform 4x4 colour
    fields, bicubic upsampling, quantised to uint8): a generator that has learned the data."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        uniform = 0.5 * (1 + torch.erf(z[:, :48] / 2**0.5))
        images = nn.functional.interpolate(uniform.reshape(-1, 3, 4, 4), size=RESOLUTION, mode="bicubic", align_corners=False)
        return (images.clamp(0, 1) * 255).round() / 127.5 - 1


class ConstantGenerator(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(z), 3, RESOLUTION, RESOLUTION)


DATA_FIELDS = {f.name for f in dataclasses.fields(DataOptions)}


def make_evaluator(accelerator: Accelerator, cache_dir: Path, **overrides) -> FIDEvaluator:
    """An evaluator of the synthetic images at RESOLUTION; `overrides` change data options
    (`data` is a --data value) or the evaluator's own arguments."""
    data = {"spec": parse_data_spec(overrides.pop("data", "synthetic")), "resolution": RESOLUTION}
    data.update({k: overrides.pop(k) for k in list(overrides) if k in DATA_FIELDS})
    options = dict(num_samples=NUM_SAMPLES, batch_size=BATCH_SIZE, cache_dir=cache_dir, seed=0, feature=TinyFeatures())
    return FIDEvaluator(accelerator, DataOptions(**data), **{**options, **overrides})


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tensors of a few hundred rows: a second OpenMP thread only adds waits at every op, seconds
    # of them when the CPU is shared. (torchrun starts each of several processes on one thread too.)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def count_stream_opens(monkeypatch):
    opened = []

    def counting_open_stream(*args, **kwargs):
        opened.append(kwargs["rank"])
        return original(*args, **kwargs)

    original = train.report.fid.open_stream
    monkeypatch.setattr(train.report.fid, "open_stream", counting_open_stream)
    return opened


def test_a_generator_of_the_data_distribution_scores_near_zero_and_a_constant_one_far_off(accelerator, tmp_path):
    evaluator = make_evaluator(accelerator, tmp_path)
    learned = evaluator.evaluate(SyntheticLikeGenerator(), LATENT_DIM)
    collapsed = evaluator.evaluate(ConstantGenerator(), LATENT_DIM)
    assert set(learned) == {"fid", "kid_mean", "kid_std"}
    assert 0 <= learned["fid"] < 0.02 * collapsed["fid"], (learned, collapsed)
    assert abs(learned["kid_mean"]) < 0.02 * collapsed["kid_mean"], (learned, collapsed)
    assert learned["kid_std"] > 0  # 100 distinct random subsets of 100 out of 200


def test_evaluation_is_reproducible_and_leaves_the_callers_rng_alone(accelerator, tmp_path):
    evaluator = make_evaluator(accelerator, tmp_path)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = evaluator.evaluate(SyntheticLikeGenerator(), LATENT_DIM)
    assert torch.equal(torch.get_rng_state(), before)
    assert evaluator.evaluate(SyntheticLikeGenerator(), LATENT_DIM) == first
    other_seed = make_evaluator(accelerator, tmp_path, seed=1).evaluate(SyntheticLikeGenerator(), LATENT_DIM)
    assert other_seed["fid"] != first["fid"]  # other latents; the same cached real statistics


def test_real_statistics_are_cached_once_and_reused_without_reading_the_data(accelerator, tmp_path, count_stream_opens):
    first = make_evaluator(accelerator, tmp_path).evaluate(SyntheticLikeGenerator(), LATENT_DIM)
    assert count_stream_opens == [0]
    (cache,) = tmp_path.iterdir()
    assert cache.suffix == ".safetensors" and "synthetic" in cache.name
    written = cache.stat().st_mtime_ns

    second = make_evaluator(accelerator, tmp_path).evaluate(SyntheticLikeGenerator(), LATENT_DIM)
    assert count_stream_opens == [0], "the second evaluator read the data again"
    assert cache.stat().st_mtime_ns == written
    assert second == first

    # Anything that changes the real images or their features gets a file of its own.
    for change in ({"resolution": 8}, {"num_samples": 100}, {"celeba_crop": 12}, {"split": "test"}):
        assert make_evaluator(accelerator, tmp_path, **change).cache_file != cache
    other_weights = TinyFeatures()
    with torch.no_grad():
        other_weights.conv.bias.fill_(0.1)
    assert make_evaluator(accelerator, tmp_path, feature=other_weights).cache_file != cache


def test_a_damaged_cache_file_is_recomputed(accelerator, tmp_path, count_stream_opens):
    expected = make_evaluator(accelerator, tmp_path).evaluate(SyntheticLikeGenerator(), LATENT_DIM)
    (cache,) = tmp_path.iterdir()
    cache.write_bytes(cache.read_bytes()[:100])
    assert make_evaluator(accelerator, tmp_path).evaluate(SyntheticLikeGenerator(), LATENT_DIM) == expected
    assert count_stream_opens == [0, 0]


def _two_process_scores(cached: str, fresh: str, expected: dict) -> None:
    """On each of two ranks: with the one-process run's cached real statistics, the same scores;
    with none, real statistics gathered from both ranks' shares, cached once, the same on both ranks."""
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    scores = make_evaluator(accelerator, Path(cached)).evaluate(SyntheticLikeGenerator(), LATENT_DIM)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (accelerator.process_index, scores, expected)

    evaluator = make_evaluator(accelerator, Path(fresh))
    fresh_scores = evaluator.evaluate(SyntheticLikeGenerator(), LATENT_DIM)
    everyone = accelerator.gather(torch.tensor([fresh_scores[k] for k in sorted(fresh_scores)], dtype=torch.float64)[None])
    assert torch.equal(everyone[0], everyone[1]), everyone
    accelerator.wait_for_everyone()
    from safetensors.torch import load_file

    assert [p.name for p in Path(fresh).iterdir()] == [evaluator.cache_file.name]
    assert load_file(evaluator.cache_file)["real_features"].shape == (NUM_SAMPLES, TinyFeatures.num_features)
    accelerator.end_training()


@pytest.mark.slow  # a gloo launch of two processes: the whole suite's, not the inner loop's
def test_two_gloo_processes_give_the_one_process_scores(accelerator, tmp_path):
    expected = make_evaluator(accelerator, tmp_path / "cached").evaluate(SyntheticLikeGenerator(), LATENT_DIM)
    debug_launch(f"{__name__}:_two_process_scores", str(tmp_path / "cached"), str(tmp_path / "fresh"), expected)


def test_toy_data_is_refused_with_a_value_error(accelerator, tmp_path):
    with pytest.raises(FIDNotApplicable, match="2-D points") as refused:
        make_evaluator(accelerator, tmp_path, data="toy:8gaussians")
    assert isinstance(refused.value, ValueError)


def test_missing_inception_weights_name_the_file_its_url_and_the_flag(accelerator, tmp_path, monkeypatch, count_stream_opens):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(FIDUnavailable) as missing:
        inception_extractor(None)
    message = str(missing.value)
    assert INCEPTION_WEIGHTS in message and URL_INCEPTION_V3 in message and "--fid-weights" in message
    assert str(tmp_path / "empty-torch-home" / "hub" / "checkpoints") in message

    with pytest.raises(FIDUnavailable, match="--fid-weights"):  # the evaluator's default, before any data
        make_evaluator(accelerator, tmp_path, feature=2048)
    assert count_stream_opens == []
    with pytest.raises(FIDUnavailable, match="no such file"):
        inception_extractor(str(tmp_path / "nowhere.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FIDUnavailable, match="not torch-fidelity's Inception weights"):
        inception_extractor(str(tmp_path / "garbage.pth"))


def test_the_weights_url_is_torch_fidelitys():
    assert URL_INCEPTION_V3 == fidelity.URL_INCEPTION_V3


def write_stand_in_inception_weights(path: Path) -> Path:
    """Random weights in the real file's format: the trained ones cannot be fetched here (only
    torch-fidelity's download is patched out to build the untrained network)."""
    with mock.patch.object(fidelity, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(fidelity.FeatureExtractorInceptionV3, "load_state_dict"):
        untrained = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(untrained.state_dict(), path)
    return path


def test_an_inception_weights_file_gives_the_tf1_resize_inception(accelerator, tmp_path):
    weights = write_stand_in_inception_weights(tmp_path / INCEPTION_WEIGHTS)

    extractor = inception_extractor(str(weights))
    assert extractor.use_antialias is False and extractor.num_features == 2048
    features = extractor(torch.randint(0, 256, (2, 3, RESOLUTION, RESOLUTION), dtype=torch.uint8))
    assert features.shape == (2, 2048) and features.isfinite().all()
    evaluator = make_evaluator(accelerator, tmp_path, feature=2048, weights_path=str(weights))
    assert "tf1-resize" in evaluator.cache_key["extractor"]



def test_evaluate_without_inception_weights_exits_2_with_one_error_line(wgangp_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    code = evaluate_main(["--run", str(wgangp_run), "--fid-samples", "8", "--fid-cache", str(tmp_path / "cache")])
    error = capsys.readouterr().err
    assert code == 2, error
    lines = error.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), error
    assert INCEPTION_WEIGHTS in lines[0] and URL_INCEPTION_V3 in lines[0] and "--fid-weights" in lines[0]
    assert not (tmp_path / "cache").exists()


def test_evaluate_names_a_missing_weights_file(wgangp_run, tmp_path, capsys):
    assert evaluate_main(["--run", str(wgangp_run), "--fid-weights", str(tmp_path / "nowhere.pth")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --fid-weights {tmp_path / 'nowhere.pth'}: no such file; fetch {URL_INCEPTION_V3} where there is"
        " internet and pass its path to --fid-weights"
    ]


@pytest.mark.parametrize("place", ["under a file", "read-only"])
def test_evaluate_refuses_an_output_it_cannot_write_before_any_work(wgangp_run, tmp_path, request, capsys, place):
    # The weights file is missing too: the output's line comes first, before the evaluation looks for anything.
    output = unwritable_folder(place, tmp_path, request) / "scores.json"
    assert evaluate_main(["--run", str(wgangp_run), "--fid-weights", str(tmp_path / "nowhere.pth"), "--output", str(output)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --output {output}: ") and lines[0].endswith("; choose another --output")


def test_evaluate_needs_a_run_folder(tmp_path, capsys):
    assert evaluate_main(["--run", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --run {tmp_path}: no config.json there")


@pytest.mark.slow
def test_training_evaluates_fid_every_k_steps_and_evaluate_py_scores_the_run(tmp_path):
    weights = write_stand_in_inception_weights(tmp_path / INCEPTION_WEIGHTS)
    out, cache = tmp_path / "run", tmp_path / "cache"
    fid_flags = ["--fid-samples", "8", "--fid-weights", str(weights), "--fid-cache", str(cache)]
    result = run_in_process_where_possible("train/wgangp.py", "--debug", "--max-steps", "4", "--fid-every", "2", *fid_flags, "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [r for r in read_metrics(out / "metrics.jsonl") if "fid" in r]
    assert [r["step"] for r in lines] == [2, 4] and all(r["fid_samples"] == 8 for r in lines)
    assert all(math.isfinite(r[k]) for r in lines for k in ("fid", "kid_mean", "kid_std"))
    assert len(list(cache.glob("*.safetensors"))) == 1  # the real features, computed once

    result = run_in_process_where_possible("train/evaluate.py", "--run", str(out), *fid_flags, "--output", str(tmp_path / "scores.json"))
    assert result.returncode == 0, result.stderr[-4000:]
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["step"] == 4 and scores["fid"] == pytest.approx(lines[-1]["fid"], rel=1e-4)


def test_missing_inception_weights_leave_training_running_without_fid(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # torch.hub.get_dir() reads it at each call
    result = train_in_process(
        "train/wgangp.py", "--debug", "--max-steps", "2", "--fid-every", "1", "--fid-cache", str(tmp_path / "cache"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "--fid-weights" in result.stderr and "training continues with FID disabled" in result.stderr
    assert not any("fid" in r for r in read_metrics(out / "metrics.jsonl"))
