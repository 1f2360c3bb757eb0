"""train/report/gif.py: whole GIFs written atomically, and frames appended in place without re-encoding."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.report.gif import GifDamaged, append_gif_frame, write_gif

SIZE = (48, 32)  # width, height; at least 16 a side, so Pillow interlaces as it does for real grids


def smooth(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """A blurry random picture with about a thousand colours, like a sample grid: a 256-colour palette
    approximates it (mid-range values keep the median cut's error under a few levels)."""
    coarse = np.random.default_rng(seed).integers(64, 192, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR)


def few_colours(seed: int, n_colours: int = 40, size: tuple[int, int] = SIZE) -> Image.Image:
    """An RGB picture with at most `n_colours` colours, which a GIF palette holds exactly."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (n_colours, 3), dtype=np.uint8)
    return Image.fromarray(colours[rng.integers(0, n_colours, (size[1], size[0]))])


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def read_frames(path: Path) -> tuple[list[np.ndarray], list[int], int]:
    """Every frame as Pillow composes it, each frame's duration in ms, and the loop count."""
    frames, durations = [], []
    with Image.open(path) as gif:
        loop = gif.info.get("loop")
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(pixels(gif))
            durations.append(gif.info["duration"])
    return frames, durations, loop


def assert_looks_like(got: np.ndarray, expected: Image.Image, exact: bool) -> None:
    difference = np.abs(got - pixels(expected))
    if exact:
        assert difference.max() == 0
    else:
        assert difference.mean() < 3, difference.mean()


@pytest.mark.parametrize("make, exact", [(smooth, False), (few_colours, True)])
def test_write_gif_reads_back_as_the_frames_given_looping_forever(tmp_path, make, exact):
    given = [make(seed) for seed in range(4)]
    write_gif(given, tmp_path / "progress.gif", duration_ms=120)
    frames, durations, loop = read_frames(tmp_path / "progress.gif")
    assert len(frames) == 4 and durations == [120] * 4 and loop == 0
    for got, expected in zip(frames, given):
        assert_looks_like(got, expected, exact)
    assert [p.name for p in tmp_path.iterdir()] == ["progress.gif"]  # no temporary file left beside it


@pytest.mark.parametrize("make, exact", [(smooth, False), (few_colours, True)])
def test_appended_frames_follow_the_written_ones_and_leave_their_bytes_untouched(tmp_path, make, exact):
    path = tmp_path / "progress.gif"
    given = [make(seed) for seed in range(3)]
    write_gif(given, path, duration_ms=200)
    for seed, duration_ms in [(10, 50), (11, 70), (12, 200)]:
        before = path.read_bytes()
        assert append_gif_frame(path, make(seed), duration_ms) is None
        given.append(make(seed))
        assert path.read_bytes()[: len(before) - 1] == before[:-1]  # only the old trailer was overwritten
    frames, durations, loop = read_frames(path)
    assert len(frames) == 6 and durations == [200, 200, 200, 50, 70, 200] and loop == 0
    for got, expected in zip(frames, given):
        assert_looks_like(got, expected, exact)


def test_appending_to_a_missing_file_starts_a_looping_gif(tmp_path):
    path = tmp_path / "progress.gif"
    append_gif_frame(path, few_colours(0), duration_ms=100)
    frames, durations, loop = read_frames(path)
    assert len(frames) == 1 and durations == [100] and loop == 0
    append_gif_frame(path, few_colours(1), duration_ms=300)
    frames, durations, loop = read_frames(path)
    assert len(frames) == 2 and durations == [100, 300] and loop == 0
    assert_looks_like(frames[1], few_colours(1), exact=True)


def test_each_appended_frame_keeps_its_own_palette(tmp_path):
    path = tmp_path / "progress.gif"
    solid = {name: Image.new("RGB", SIZE, colour) for name, colour in
             [("red", (255, 0, 0)), ("blue", (0, 0, 255)), ("green", (0, 160, 0))]}
    for image in solid.values():  # each frame's palette holds its one colour, none of the others
        append_gif_frame(path, image, duration_ms=100)
    paletted = few_colours(7).quantize(16)  # an already paletted frame goes in as it is
    append_gif_frame(path, paletted, duration_ms=100)
    frames, _, _ = read_frames(path)
    assert len(frames) == 4
    for got, expected in zip(frames, [*solid.values(), paletted]):
        assert_looks_like(got, expected, exact=True)


def test_a_frame_of_another_size_is_refused_naming_both_sizes(tmp_path):
    path = tmp_path / "progress.gif"
    write_gif([smooth(0)], path, duration_ms=100)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="64x64.*48x32"):
        append_gif_frame(path, smooth(1, size=(64, 64)), duration_ms=100)
    assert path.read_bytes() == before


@pytest.mark.parametrize("cut", [1, 2, 25])
def test_a_torn_file_is_reported_damaged_and_left_as_it_is(tmp_path, cut):
    path = tmp_path / "progress.gif"
    write_gif([smooth(0), smooth(1)], path, duration_ms=100)
    torn = path.read_bytes()[:-cut]
    path.write_bytes(torn)
    with pytest.raises(GifDamaged, match="write_gif"):
        append_gif_frame(path, smooth(2), duration_ms=100)
    assert path.read_bytes() == torn


def test_a_file_that_is_not_a_gif_is_reported_damaged(tmp_path):
    path = tmp_path / "progress.gif"
    path.write_bytes(b"")
    with pytest.raises(GifDamaged):
        append_gif_frame(path, smooth(0), duration_ms=100)
    assert path.read_bytes() == b""
