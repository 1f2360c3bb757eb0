"""train/data/download.py: local parquet shards that `parquet:` reads like the source."""
import pytest

from tests.fixtures import row_ids, write_parquet_shards
from train.data import DataOptions, open_stream, parse_data_spec
from train.data.__main__ import main


def test_download_writes_shards_that_train_like_the_source(tmp_path):
    source = write_parquet_shards(tmp_path / "src", rows=120, shards=2)
    assert main(["download", f"parquet:{source}", "--to", str(tmp_path / "copy"), "--rows-per-shard", "50"]) == 0
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [f"train-0000{i}.parquet" for i in range(3)]
    options = DataOptions(parse_data_spec(f"parquet:{tmp_path}/copy/*.parquet"), resolution=32, hflip=False, shuffle_buffer=1)
    copy = open_stream(options, batch_size=40, seed=0, rank=0, world_size=1)
    rows = [r for _ in range(3) for r in row_ids(next(copy))]
    assert sorted(rows) == list(range(120))


def test_download_refuses_a_folder_that_already_holds_files(tmp_path, capsys):
    source = write_parquet_shards(tmp_path / "src", rows=10, shards=1)
    (tmp_path / "pixels").mkdir()
    (tmp_path / "pixels" / "manifest.json").write_text("{}")  # a prepared dataset's, say: no shards of ours go in there
    capsys.readouterr()
    for full in ("src", "pixels"):
        assert main(["download", f"parquet:{source}", "--to", str(tmp_path / full)]) == 2
        assert capsys.readouterr().err.splitlines() == [f"error: --to {tmp_path / full}: holds files already; choose a new or empty folder"]
    assert sorted(p.name for p in (tmp_path / "pixels").iterdir()) == ["manifest.json"]


def test_download_refuses_a_shard_size_below_one_row(tmp_path, capsys):
    source = write_parquet_shards(tmp_path / "src", rows=10, shards=1)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(["download", f"parquet:{source}", "--to", str(tmp_path / "copy"), "--rows-per-shard", "0"])
    assert exit.value.code == 2 and not (tmp_path / "copy").exists()
    assert capsys.readouterr().err.splitlines() == ["error: argument --rows-per-shard: 0: must be at least 1 (see --help)"]
