"""train/data/{specs,generated}.py: --data values, toy and synthetic streams and their state."""
import math

import pytest
import torch

from train.common.seeds import stream_seed
from train.data import (
    DataOptions,
    DataSpecError,
    open_stream,
    parse_data_spec,
    to_model_input,
    toy_modes,
)


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


@pytest.mark.parametrize("spec", ["synthetic", "toy:8gaussians"])
def test_generated_streams_continue_exactly_from_their_state(spec):
    uninterrupted = stream(spec)
    expected = [next(uninterrupted) for _ in range(5)]
    interrupted = stream(spec)
    [next(interrupted) for _ in range(2)]
    resumed = stream(spec)
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
