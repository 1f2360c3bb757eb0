"""train/data.py: the --data sources, their per-rank sharding and their resumable state."""
import itertools
import math

import pytest
import torch
from PIL import Image

from train.data import (
    DataSpecError,
    FolderStream,
    open_stream,
    parse_data_spec,
    to_model_input,
    toy_modes,
)


def stream(spec: str, rank: int = 0, world: int = 1, batch: int = 4, resolution: int = 16, seed: int = 0):
    return open_stream(parse_data_spec(spec), resolution=resolution, batch_size=batch, seed=seed, rank=rank, world_size=world)


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


def make_folder(path, count: int, size=(24, 20)):
    """Solid grey images whose level is 6 x their index, some nested, half PNG and half JPEG."""
    path.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        folder = path / ("nested" if i % 3 == 0 else "")
        folder.mkdir(exist_ok=True)
        Image.new("RGB", size, (6 * i,) * 3).save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}", quality=100)
    return path


def ids(batch: torch.Tensor) -> list[int]:
    return [round(v / 6) for v in batch[:, 0, 4, 4].float().tolist()]


def test_folder_images_are_resized_on_the_short_side_and_centre_cropped(tmp_path):
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "wide.png")
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((0, 255, 0), (10, 0, 30, 20))  # the centre square is green
    image.save(tmp_path / "wide2.png")
    folder = FolderStream(str(tmp_path), resolution=16, batch_size=2, seed=0, rank=0, world_size=1, workers=0)
    batch = next(folder)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.uint8
    greens = [img for img in batch if img[1].float().mean() > 200]
    assert len(greens) == 1 and greens[0][2].float().mean() < 10  # no blue border left after the crop


def test_folder_ranks_read_disjoint_rows_covering_the_epoch(tmp_path):
    folder = make_folder(tmp_path / "imgs", 40)
    seen = []
    for rank in range(2):
        shard = FolderStream(str(folder), resolution=8, batch_size=4, seed=3, rank=rank, world_size=2, workers=0)
        seen.append([i for batch in itertools.islice(shard, 5) for i in ids(batch)])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(40))


def test_folder_stream_resumes_without_replaying_rows(tmp_path):
    folder = make_folder(tmp_path / "imgs", 24)
    make = lambda: FolderStream(str(folder), resolution=8, batch_size=4, seed=1, rank=0, world_size=1, workers=0)  # noqa: E731
    expected = [ids(next(s)) for s in [make()] for _ in range(9)]  # crosses an epoch boundary
    first = make()
    before = [ids(next(first)) for _ in range(4)]
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    after = [ids(next(resumed)) for _ in range(5)]
    assert before + after == expected
    assert not set(sum(before, [])) & set(sum(after[:2], []))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("toy:9gaussians", "--data toy:9gaussians: unknown toy dataset; choose toy:8gaussians or toy:25gaussians"),
        ("hf:mattymchen/celeba-hq", "--data hf:mattymchen/celeba-hq: the hf: source needs the streaming datasets loader"),
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


def test_too_few_images_for_one_batch_per_rank_is_refused(tmp_path):
    folder = make_folder(tmp_path / "imgs", 5)
    with pytest.raises(DataSpecError, match="5 images cannot fill one batch of 4 on each of 2 processes"):
        FolderStream(str(folder), resolution=8, batch_size=4, seed=0, rank=0, world_size=2, workers=0)


def test_stream_seeds_differ_per_rank_and_purpose_and_are_reproducible():
    from train.data import stream_seed

    seeds = {(rank, purpose): stream_seed(7, rank, purpose) for rank in range(4) for purpose in range(2)}
    assert len(set(seeds.values())) == len(seeds)
    assert stream_seed(7, 1, 0) == seeds[(1, 0)]
