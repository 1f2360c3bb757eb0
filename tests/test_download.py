"""train/data/download.py: local parquet shards that `parquet:` reads like the source."""
from tests.conftest import run_script
from tests.fixtures import row_ids, write_parquet_shards
from train.data import open_stream, parse_data_spec


def test_download_writes_shards_that_train_like_the_source(tmp_path):
    source = write_parquet_shards(tmp_path / "src", rows=120, shards=2)
    result = run_script("train/data/__main__.py", "download", f"parquet:{source}", "--to", str(tmp_path / "copy"), "--rows-per-shard", "50")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [f"train-0000{i}.parquet" for i in range(3)]
    copy = open_stream(parse_data_spec(f"parquet:{tmp_path}/copy/*.parquet"), resolution=32, batch_size=40, seed=0,
                       rank=0, world_size=1, workers=0, hflip=False, shuffle_buffer=1)
    rows = [r for _ in range(3) for r in row_ids(next(copy))]
    assert sorted(rows) == list(range(120))


def test_download_refuses_a_folder_that_already_holds_shards(tmp_path):
    source = write_parquet_shards(tmp_path / "src", rows=10, shards=1)
    result = run_script("train/data/__main__.py", "download", f"parquet:{source}", "--to", str(tmp_path / "src"))
    assert result.returncode == 2 and "already holds parquet shards" in result.stderr
