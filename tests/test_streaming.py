"""train/data/streaming.py: hub, parquet and folder sources through one datasets pipeline."""
import io
import itertools
import signal
import subprocess
import sys

import psutil
import pytest
import torch

from tests.conftest import ROOT
from tests.fixtures import (
    bilevel_png,
    declared_png,
    row_ids,
    write_image_folder,
    write_parquet_shards,
)
from train.data import (
    DataError,
    DataOptions,
    check_skipped,
    open_stream,
    parse_data_spec,
)
from train.data.decode import ExtremeImageWarning
from train.data.streaming import load_source, shard_for_rank


def stream(spec: str, rank: int = 0, world: int = 1, batch: int = 10, **options):
    options = DataOptions(parse_data_spec(spec), resolution=32, **{"workers": 2, "hflip": False, "shuffle_buffer": 50, **options})
    return open_stream(options, batch_size=batch, seed=0, rank=rank, world_size=world)


def read_rows(source, batches: int) -> list[int]:
    return [row for batch in itertools.islice(source, batches) for row in row_ids(batch)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_parquet_shards(tmp_path_factory.mktemp("parquet"), rows=400, shards=4)


def test_two_ranks_with_two_workers_read_disjoint_rows_covering_one_pass(shards):
    rows = [read_rows(stream(f"parquet:{shards}", rank, 2, workers=2), 20) for rank in range(2)]
    assert all(len(set(r)) == len(r) == 200 for r in rows)
    assert not set(rows[0]) & set(rows[1])
    assert set(rows[0]) | set(rows[1]) == set(range(400))


def test_workers_never_exceed_the_ranks_shards(shards):
    assert stream(f"parquet:{shards}", 0, 2, workers=8).workers == 2  # 4 shards over 2 ranks


@pytest.mark.parametrize("row_group, how", [(25, "row groups"), (None, "one row in 2 on each process")])
def test_an_uneven_shard_count_still_gives_disjoint_rows(tmp_path, row_group, how):
    glob = write_parquet_shards(tmp_path, rows=150, shards=3, row_group=row_group)
    streams = [stream(f"parquet:{glob}", rank, 2, batch=5, workers=1) for rank in range(2)]
    assert all(how in s.split_description for s in streams)
    rows = [read_rows(s, 15) for s in streams]
    assert not set(rows[0]) & set(rows[1])
    assert set(rows[0]) | set(rows[1]) == set(range(150))


def test_an_image_folder_goes_through_the_same_pipeline(tmp_path):
    folder = write_image_folder(tmp_path / "faces", rows=40)
    rows = [read_rows(stream(str(folder), rank, 2, batch=4, workers=1), 5) for rank in range(2)]
    assert not set(rows[0]) & set(rows[1])
    assert set(rows[0]) | set(rows[1]) == set(range(40))


def test_decoding_workers_live_through_ctrl_c_and_the_other_stop_signals(shards):
    # A terminal's Ctrl-C reaches every process of its group, and Slurm signals every process of a
    # job: the rank decides when to stop, and its batches must keep coming until then.
    before = set(psutil.Process().children())
    source = stream(f"parquet:{shards}", workers=2, batch=5)
    read_rows(source, 1)
    workers = set(psutil.Process().children()) - before
    assert len(workers) == 2
    for worker in workers:
        for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            worker.send_signal(stop_signal)
    assert len(read_rows(source, 20)) == 100  # more than the workers had made before the signals
    assert all(worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
    source.close()


def test_the_resumed_stream_does_not_repeat_rows_seen_before_the_checkpoint(shards):
    # 400 rows, 2 workers with 200 each: 60 + 50 buffered + 90 more stays within the first pass
    first = stream(f"parquet:{shards}")
    before = read_rows(first, 12)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # through a checkpoint file, loaded as weights only
    buffer.seek(0)
    resumed = stream(f"parquet:{shards}")
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    after = read_rows(resumed, 18)
    assert not set(before) & set(after)
    assert len(set(after)) == len(after)


def test_each_pass_is_shuffled_differently_and_the_stream_never_ends(tmp_path):
    glob = write_parquet_shards(tmp_path, rows=60, shards=2)
    rows = read_rows(stream(f"parquet:{glob}", batch=10, workers=0), 18)  # three passes
    passes = [rows[i : i + 60] for i in (0, 60, 120)]
    assert all(sorted(p) == list(range(60)) for p in passes)
    assert passes[0] != passes[1]


def test_batches_are_uint8_images_with_random_horizontal_flips(shards):
    plain = next(stream(f"parquet:{shards}", hflip=False))
    flipped = next(stream(f"parquet:{shards}", hflip=True))
    assert flipped.shape == (10, 3, 32, 32) and flipped.dtype == torch.uint8
    same = [torch.equal(f, p) for f, p in zip(flipped, plain)]
    mirrored = [torch.equal(f, p.flip(-1)) for f, p in zip(flipped, plain)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert any(mirrored) and any(same)


def test_corrupt_rows_are_skipped_and_counted(tmp_path):
    glob = write_parquet_shards(tmp_path, rows=200, shards=2, corrupt_every=20)
    source = stream(f"parquet:{glob}", workers=1)
    rows = read_rows(source, 9)
    assert len(rows) == 90 and not any(row % 20 == 19 for row in rows)
    counters = source.counters()
    assert counters["data_skipped"] >= 3 and counters["data_read"] == 90 + counters["data_skipped"]


def test_too_many_corrupt_rows_stop_the_run_with_the_dataset_and_the_count(tmp_path):
    glob = write_parquet_shards(tmp_path, rows=1200, shards=2, corrupt_every=20)  # 5% corrupt
    source = stream(f"parquet:{glob}", batch=50)
    with pytest.raises(DataError, match=r"--data parquet:.*: \d+ of the \d+ rows read so far \([45]\.\d%\) are corrupt"):
        for _ in range(30):
            next(source)
            check_skipped(source.spec, **{k.removeprefix("data_"): v for k, v in source.counters().items()})
    check_skipped("x", read=999, skipped=500)  # judged only from 1,000 rows on
    check_skipped("x", read=1000, skipped=10)  # 1% is still fine


def test_the_offline_hub_error_names_the_dataset_and_the_local_route(tmp_path):
    code = "from train.data.streaming import load_source; from train.data import parse_data_spec; load_source(parse_data_spec('hf:someone/faces'))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "--data hf:someone/faces: cannot open it on the Hugging Face hub" in message
    assert "python -m train.data download hf:someone/faces --to DIR" in message and "parquet:DIR/*.parquet" in message


def test_a_single_image_column_is_found_and_others_are_refused(shards):
    from train.data.specs import DataSpecError
    from train.data.streaming import image_column_of

    source = load_source(parse_data_spec(f"parquet:{shards}"))
    assert image_column_of(source, parse_data_spec(f"parquet:{shards}"), None) == "image"
    with pytest.raises(DataSpecError, match="--image-column photo: .* has columns image, label"):
        image_column_of(source, parse_data_spec(f"parquet:{shards}"), "photo")


def test_split_for_one_process_is_a_no_op(shards):
    source = load_source(parse_data_spec(f"parquet:{shards}"))
    same, how = shard_for_rank(source, parse_data_spec(f"parquet:{shards}"), 0, 1)
    assert same is source and how == "4 shards on one process"


def test_images_of_extreme_shape_or_size_are_skipped_counted_and_named(tmp_path):
    folder = write_image_folder(tmp_path / "faces", rows=20)
    extreme = {"a/tall.png": bilevel_png(1, 50_000), "b/wide.png": bilevel_png(50_000, 1),
               "a/huge.png": bilevel_png(6_000, 6_000), "b/declared.png": declared_png(30_000, 30_000)}
    for name, data in extreme.items():
        (folder / name).write_bytes(data)
    source = stream(str(folder), batch=4, workers=0)  # decoded in this process: its warnings reach pytest
    with pytest.warns(ExtremeImageWarning) as warned:
        rows = read_rows(source, 10)  # 40 images: the whole first pass (20 and the 4 extreme ones) and more
    assert sorted(rows) == sorted(list(range(20)) * 2)
    counters = source.counters()
    named = [str(w.message) for w in warned if issubclass(w.category, ExtremeImageWarning)]
    assert 4 <= counters["data_skipped"] == len(named) and counters["data_read"] == 40 + counters["data_skipped"]
    for name in extreme:
        assert any(name in message for message in named), name
