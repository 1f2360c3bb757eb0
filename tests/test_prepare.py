"""train/data/prepare.py, prepared.py and prepared_stream.py: images decoded once, trained from as pixels."""
import io
import itertools
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading

import datasets
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from tqdm.auto import tqdm

from tests.conftest import ROOT, train_in_process
from tests.fixtures import FEATURES, id_image, jpeg_bytes, row_ids, write_image_folder, write_parquet_shards
from train.data import DataError, DataOptions, DataSpecError, open_stream, parse_data_spec
from train.data.__main__ import main as data_main
from train.data.decode import decode_image
from train.data import prepare as prepare_module
from train.data import prepare_shards
from train.data import prepared_stream
from train.data.prepare import PrepareRequest, prepare
from train.data.prepared import MANIFEST, Manifest, Preprocessing, PreparedShardWarning, check_prepared
from train.common.writable import Unwritable

ROWS, ROWS_PER_SHARD = 32, 8


def prepared(source: str, to, resolution: int = 32, workers: int = 0, **options):
    request = PrepareRequest(source, to, Preprocessing(resolution, **options), rows_per_shard=ROWS_PER_SHARD,
                             workers=workers, progress=False)
    return prepare(request)


def stream(folder, rank: int = 0, world: int = 1, batch: int = 4, pin_memory: bool = False, **options):
    options = DataOptions(parse_data_spec(f"prepared:{folder}"), resolution=32, **{"hflip": False, "shuffle_buffer": 8, **options})
    return open_stream(options, batch_size=batch, seed=0, rank=rank, world_size=world, pin_memory=pin_memory)


def read_rows(source, batches: int) -> list[int]:
    return [row for batch in itertools.islice(source, batches) for row in row_ids(batch)]


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    """32 id images (tests/fixtures.py) from parquet, prepared at 32 px: 4 shards of 8."""
    folder = tmp_path_factory.mktemp("prepared")
    glob = write_parquet_shards(folder / "source", rows=ROWS, shards=2)
    prepared(f"parquet:{glob}", folder / "pixels")
    return folder / "pixels"


def rgba_png(row: int) -> bytes:
    """A 48x40 image with transparent pixels over colours that must not show through."""
    pixels = np.random.default_rng(row).integers(0, 256, (40, 48, 4), dtype=np.uint8)
    pixels[::3, :, 3] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def test_prepared_pixels_equal_decode_image_exactly_with_crop_and_alpha(tmp_path, monkeypatch):
    blobs = [rgba_png(row) if row % 2 else jpeg_bytes(id_image(row, 40).resize((48, 40))) for row in range(12)]
    (tmp_path / "source").mkdir()
    records = [{"image": {"bytes": blob, "path": None}, "label": row} for row, blob in enumerate(blobs)]
    datasets.Dataset.from_list(records, features=FEATURES).to_parquet(str(tmp_path / "source" / "train.parquet"))
    flags = {"celeba_crop": 36, "background": (0, 128, 255)}
    # in this process, over decoding processes, and each with a decoding thread (the way of large rows)
    unthreaded = prepare_shards.ROW_BYTES_WORTH_A_THREAD
    monkeypatch.setattr(prepare_shards, "usable_cores", lambda: 4)  # a core left for each process's thread
    for way, workers, threaded_from in (("in-process", 0, unthreaded), ("processes", 2, unthreaded), ("thread", 0, 0), ("processes-threads", 2, 0)):
        monkeypatch.setattr(prepare_shards, "ROW_BYTES_WORTH_A_THREAD", threaded_from)
        manifest = prepared(f"parquet:{tmp_path}/source/*.parquet", tmp_path / way, 16, workers, **flags).manifest
        pixels = np.concatenate([np.load(tmp_path / way / shard.file) for shard in manifest.shards])
        expected = np.stack([decode_image(blob, 16, 36, (0, 128, 255)).numpy() for blob in blobs])
        assert pixels.dtype == np.uint8 and np.array_equal(pixels, expected)


def test_local_parquet_is_read_row_for_row_as_datasets_reads_it_an_image_or_a_binary_column(tmp_path):
    """prepare reads local parquet with pyarrow (a memory map, no Python copy of each row)."""
    write_parquet_shards(tmp_path / "images", rows=40, shards=2)  # batches of 16 across two files
    expected = [bytes(row["image"]["bytes"]) for row in datasets.load_dataset(
        "parquet", data_files={"train": sorted(map(str, (tmp_path / "images").glob("*.parquet")))}, split="train",
        streaming=True).cast_column("image", datasets.Image(decode=False))]
    files = sorted(map(str, (tmp_path / "images").glob("*.parquet")))
    for rows_per_shard, limit in ((7, None), (40, None), (16, 30)):  # shards across pyarrow's batches and the files
        shards = list(prepare_module._parquet_shards(files, "image", rows_per_shard, limit))
        cells = [cell for shard in shards for cell in shard.cells()]
        assert [bytes(cell["bytes"]) for cell in cells] == expected[:limit] and [shard.rows for shard in shards[:-1]] == [rows_per_shard] * (len(shards) - 1)
    assert len(expected) == 40
    blobs = [jpeg_bytes(id_image(row, 24)) for row in range(5)]
    (tmp_path / "binary").mkdir()
    pq.write_table(pa.table({"jpeg": pa.array(blobs, pa.binary()), "label": list(range(5))}), tmp_path / "binary" / "t.parquet")
    request = PrepareRequest(f"parquet:{tmp_path}/binary/*.parquet", tmp_path / "pixels", Preprocessing(16), image_column="jpeg",
                             progress=False)
    manifest = prepare(request).manifest
    pixels = np.concatenate([np.load(tmp_path / "pixels" / shard.file) for shard in manifest.shards])
    assert np.array_equal(pixels, np.stack([decode_image(blob, 16).numpy() for blob in blobs]))


class DiesWhereUnpickled:
    """A row that kills the decoding process it reaches, as a crash in a decoder or the OOM killer would."""

    def __reduce__(self):
        return os._exit, (1,)


def test_a_decoding_process_that_dies_ends_the_prepare_with_a_line_instead_of_a_hang(tmp_path):
    cells = [{"bytes": jpeg_bytes(id_image(row, 16)), "path": None} for row in range(8)]
    dies = {"bytes": None, "path": None, "dies": DiesWhereUnpickled()}
    died = pytest.raises(prepare_shards.DecodingProcessDied, match="--workers 2: a decoding process died .* rerun with --workers 0")
    # row by row (a hub source's rows, here with their bytes), and a whole shard a worker reads itself
    with prepare_shards.Decoder(Preprocessing(16), tmp_path, workers=2) as decoder:
        assert all(pixels is not None for pixels, _ in decoder.decoded(cells))
        with died:
            list(decoder.decoded(cells + [dies]))
    with prepare_shards.Decoder(Preprocessing(16), tmp_path, workers=2) as decoder, died:
        list(decoder.made([prepare_shards.ShardRows(0, given=(dies,))], tqdm(disable=True)))


# What a decoding process imports as it starts: the CLI's main module again (multiprocessing runs it as
# __mp_main__) and the forkserver's preload. torch and datasets there took 2.1 of its 2.4 s to start.
A_WORKERS_IMPORTS = """
import runpy, sys
runpy.run_module("train.data.__main__", run_name="__mp_main__")
import train.data.prepare_shards
print(" ".join(name for name in ("torch", "datasets") if name in sys.modules))
"""


def test_a_decoding_process_starts_without_torch_or_datasets():
    imported = subprocess.run([sys.executable, "-c", A_WORKERS_IMPORTS], cwd=ROOT, capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == ""


@pytest.mark.parametrize("threaded", [False, True], ids=["in-process", "decoding-thread"])
def test_the_manifest_names_source_options_counts_skipped_rows_and_checksums(tmp_path, monkeypatch, threaded):
    if threaded:
        monkeypatch.setattr(prepare_shards, "ROW_BYTES_WORTH_A_THREAD", 0)
        monkeypatch.setattr(prepare_shards, "usable_cores", lambda: 2)
    glob = write_parquet_shards(tmp_path / "source", rows=20, shards=1, corrupt_every=10)
    manifest = prepared(f"parquet:{glob}", tmp_path / "pixels").manifest
    record = json.loads((tmp_path / "pixels" / MANIFEST).read_text())
    assert record["source"] == f"parquet:{glob}" and record["complete"] is True
    assert record["preprocessing"] == {"resolution": 32, "celeba_crop": 0, "background": [255, 255, 255]}
    assert (record["count"], record["skipped"]) == (18, 2) == (manifest.count, manifest.skipped)
    assert [s["source_rows"] for s in record["shards"]] == [8, 8, 4] and all(len(s["crc32"]) == 8 for s in record["shards"])
    assert all("sha1" in name for s in record["shards"] for name in s["skipped_rows"])
    rows = sorted(read_rows(stream(tmp_path / "pixels", batch=6, workers=0), 3))
    assert rows == [r for r in range(20) if r % 10 != 9]


def test_a_killed_prepare_resumes_without_redoing_finished_shards(ids, tmp_path):
    # What a kill while shard 3 was being written leaves: shards 0-2 recorded, a temporary file, an
    # unfinished manifest.
    folder = tmp_path / "pixels"
    folder.mkdir()
    for path in ids.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    manifest = Manifest.from_json((folder / MANIFEST).read_text())
    manifest.shards, manifest.complete = manifest.shards[:3], False
    manifest.write(folder)
    (folder / "shard-00003.npy").unlink()
    (folder / "shard-00003.1234.tmp.npy").write_bytes(b"half a shard")
    finished = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-0000[0-2].npy")}
    glob = ids.parent / "source" / "*.parquet"
    with pytest.raises(DataSpecError, match="unfinished"):
        check_prepared(DataOptions(parse_data_spec(f"prepared:{folder}"), 32))
    assert prepared(f"parquet:{glob}", folder).written == [3]
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-0000[0-2].npy")} == finished
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in ids.iterdir())
    assert (folder / MANIFEST).read_text() == (ids / MANIFEST).read_text()


def test_a_sigkilled_prepare_resumes_where_it_was_killed(tmp_path, monkeypatch):
    # A fork rather than a new interpreter: the same real SIGKILL, without seconds of imports.
    glob = write_parquet_shards(tmp_path / "source", rows=24, shards=1)
    monkeypatch.setenv("FACEGAN_FAILPOINTS", "prepare_pause=600@0")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: prepare until the failpoint holds it after shard 0's record
        try:
            torch.set_num_threads(1)  # no OpenMP pool: the parent's threads are not in the fork (as in DataLoader's workers)
            os.dup2(write, 2)
            sys.stderr = os.fdopen(2, "w")
            prepared(f"parquet:{glob}", tmp_path / "pixels")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as child:
        said = next((line for line in child if "failpoint prepare_pause" in line), None)  # its word, not a sleep
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert said is not None
    monkeypatch.delenv("FACEGAN_FAILPOINTS")
    first = (tmp_path / "pixels" / "shard-00000.npy").stat().st_mtime_ns
    assert [s.index for s in Manifest.from_json((tmp_path / "pixels" / MANIFEST).read_text()).shards] == [0]
    result = prepared(f"parquet:{glob}", tmp_path / "pixels")
    assert result.written == [1, 2] and result.manifest.complete and result.manifest.count == 24
    assert (tmp_path / "pixels" / "shard-00000.npy").stat().st_mtime_ns == first


def test_a_workers_shard_is_left_unwritten_at_its_next_row_once_the_prepare_process_stops(tmp_path, monkeypatch):
    stop = threading.Event()
    monkeypatch.setattr(prepare_shards, "_stop", stop)
    monkeypatch.setattr(prepare_shards, "_progress", multiprocessing.Value("q", 0))
    pixels = (np.zeros((3, 16, 16), np.uint8), None)

    def rows(stop_after: int | None):
        for row in range(4):
            if row == stop_after:
                stop.set()  # what Decoder.__exit__ does on a Ctrl-C or an error in the prepare process
            yield pixels

    assert prepare_shards.write_shard(tmp_path, 0, prepare_shards._watched(rows(None)), 16).images == 4
    assert prepare_shards._progress.value == 4
    (tmp_path / "shard-00000.npy").unlink()
    with pytest.raises(prepare_shards.ShardLeft):
        prepare_shards.write_shard(tmp_path, 0, prepare_shards._watched(rows(2)), 16)
    assert list(tmp_path.iterdir()) == [] and prepare_shards._progress.value == 6


MAKES_ONE_SHARD = """
import pickle, sys
from pathlib import Path
from tqdm.auto import tqdm
from train.data.prepare_shards import Decoder
from train.data.prepared import Preprocessing
if __name__ == "__main__":
    folder = Path(sys.argv[1])
    with Decoder(Preprocessing(16), folder / "out", workers=1) as decoder:
        list(decoder.made([pickle.loads((folder / "shard.pickle").read_bytes())], tqdm(disable=True)))
"""


@pytest.mark.slow
def test_a_worker_whose_prepare_process_was_killed_leaves_its_shard_unwritten(tmp_path):
    """A SIGKILL leaves no prepare process to stop its workers: each sees it gone at its next row,
    rather than finishing shards into a folder that a rerun may be making."""
    (tmp_path / "out").mkdir()
    paths = [tmp_path / f"{row}.jpg" for row in range(3)]
    for row, path in enumerate(paths):
        path.write_bytes(jpeg_bytes(id_image(row, 16)))
    os.unlink(paths[1])
    os.mkfifo(paths[1])  # row 1: the worker waits there until this test writes it, its shard half made
    shard = prepare_shards.ShardRows(0, given=tuple({"bytes": None, "path": str(path)} for path in paths))
    (tmp_path / "shard.pickle").write_bytes(pickle.dumps(shard))
    # A process of its own, not a fork of this one: a fork shares this process's forkserver, which
    # is not its child (multiprocessing's check of the server then fails).
    making = subprocess.Popen([sys.executable, "-c", MAKES_ONE_SHARD, str(tmp_path)], cwd=ROOT)
    opened = threading.Event()

    def unblock_if_it_ends_first():  # a failure to start would leave this test waiting for a reader for ever
        making.wait()
        if not opened.is_set():
            os.close(os.open(paths[1], os.O_RDONLY | os.O_NONBLOCK))

    threading.Thread(target=unblock_if_it_ends_first, daemon=True).start()
    try:
        with open(paths[1], "wb") as row:  # opens once the worker has opened it: row 0 is written
            opened.set()
            assert making.poll() is None, f"the prepare process ended first, exit {making.returncode}"
            (half_made,) = (tmp_path / "out").glob("shard-00000.*.tmp.npy")
            worker = psutil.Process(int(half_made.name.split(".")[1]))
            making.kill()
            making.wait()
            row.write(jpeg_bytes(id_image(1, 16)))
    finally:
        making.kill()
    worker.wait(timeout=60)  # it ends (rather than wait for its next task for ever): its prepare process is gone
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_ends_a_prepare_with_workers_in_one_line_keeping_the_finished_shards(tmp_path):
    glob = write_parquet_shards(tmp_path / "source", rows=24, shards=1)
    command = [sys.executable, "-m", "train.data", "prepare", f"parquet:{glob}", "--resolution", "32", "--to", str(tmp_path / "pixels"),
               "--workers", "1", "--rows-per-shard", str(ROWS_PER_SHARD)]
    env = {**os.environ, "FACEGAN_FAILPOINTS": "prepare_pause=600@0"}  # held after shard 0's record
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        said = next((line for line in process.stderr if "failpoint prepare_pause" in line), None)  # its word, not a sleep
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group, the decoding worker too
        rest = process.stderr.read()
        process.wait(timeout=60)
    finally:
        process.kill()
    assert said is not None and process.returncode == 130, rest[-3000:]
    assert rest.strip().splitlines()[-1] == (f"interrupted: the shards finished so far are kept in {tmp_path / 'pixels'};"
                                             " rerun the same command to continue")
    assert "Traceback" not in rest, rest[-3000:]
    assert [s.index for s in Manifest.from_json((tmp_path / "pixels" / MANIFEST).read_text()).shards] == [0]


@pytest.mark.parametrize("flag, value, made_with", [("--resolution", "64", "32"), ("--rows-per-shard", "7", str(ROWS_PER_SHARD)),
                                                    ("--alpha-background", "0 0 0", "255 255 255")])
def test_a_prepare_into_a_preparation_made_with_other_flags_names_both_values(ids, capsys, flag, value, made_with):
    glob = ids.parent / "source" / "*.parquet"
    before = sorted(p.stat().st_mtime_ns for p in ids.iterdir())
    args = {"--resolution": "32", "--rows-per-shard": str(ROWS_PER_SHARD), flag: value}
    assert data_main(["prepare", f"parquet:{glob}", "--to", str(ids), *(w for f, v in args.items() for w in (f, *v.split()))]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --to {ids}: it holds a preparation of parquet:{glob.resolve()} made with {flag} {made_with}, where this command"
        f" gives {flag} {value}; rerun with {flag} {made_with} to continue it, or choose an empty folder"]
    assert sorted(p.stat().st_mtime_ns for p in ids.iterdir()) == before


def test_a_prepare_of_another_source_into_a_preparation_or_into_a_full_folder_is_refused(ids, tmp_path):
    folder = write_image_folder(tmp_path / "faces", rows=2)
    with pytest.raises(DataSpecError, match=rf"--to {ids}: it holds a preparation of parquet:.*, not of {folder}; choose an empty folder$"):
        prepared(str(folder), ids)
    with pytest.raises(Unwritable, match=rf"--to {folder}: holds files already; choose an empty folder, or a preparation's own"):
        prepared(str(folder), folder)


@pytest.mark.parametrize("args, message", [
    (["--resolution", "63"], "--resolution 63: no model here trains at it; choose one of 32, 64, 128, 256, 512, 1024"),
    (["--workers", "-1"], "argument --workers: -1: must be 0 or more (see --help)"),
    (["--rows-per-shard", "0"], "argument --rows-per-shard: 0: must be at least 1 (see --help)"),
    (["--limit", "0"], "argument --limit: 0: must be at least 1 (see --help)"),
    (["--limit", "ten"], "argument --limit: 'ten' is not a whole number (see --help)"),
    (["--to", "{file}"], "--to {file}: a file; choose an empty folder, or a preparation's own to continue it"),
    (["--to", "{file}/pixels"], "--to {file}/pixels: {file} is a file; choose an empty folder, or a preparation's own to continue it"),
])
def test_bad_prepare_flags_are_refused_in_one_line_before_anything_is_decoded(tmp_path, capsys, args, message):
    folder = write_image_folder(tmp_path / "faces", rows=2)
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    command = ["prepare", str(folder), "--to", str(tmp_path / "pixels"), "--resolution", "32", *(a.format(file=file) for a in args)]
    try:
        code = data_main(command)
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    assert code == 2 and capsys.readouterr().err.splitlines() == [f"error: {message.format(file=file)}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "notes.txt"] and file.read_text() == "mine"


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_disjoint_shares_covering_the_data_in_their_own_processes(ids, world):
    """Whole shards per rank where the 4 shards divide evenly, else every world-th row."""
    streams = [stream(ids, rank, world, batch=1, workers=2) for rank in range(world)]
    assert [s.workers for s in streams] == [0] * world  # no hand-off through shared memory: it cost more than the reading
    shares = [range(rank * 8, ROWS, world * 8) if world == 2 else range(rank, ROWS, world) for rank in range(world)]
    expected = [{row for first in share for row in (range(first, first + 8) if world == 2 else [first])} for share in shares]
    rows = [read_rows(s, len(share)) for s, share in zip(streams, expected)]
    assert [set(r) for r in rows] == expected and all(len(set(r)) == len(r) for r in rows)
    assert set().union(*expected) == set(range(ROWS))


def test_a_rank_left_without_rows_is_refused_in_one_line(ids):
    with pytest.raises(DataError, match=r"its 32 images leave process 32 of 33 none; train on fewer processes"):
        stream(ids, 32, 33)


def test_every_pass_is_a_new_order_of_all_the_rows_and_a_resumed_stream_continues_it_exactly(ids):
    """Through a checkpoint file, loaded as weights only, across a pass boundary, flips included."""
    first = stream(ids, workers=0, hflip=True)
    plain = stream(ids, workers=0)
    passes = [read_rows(plain, ROWS // 4) for _ in range(2)]
    assert [sorted(p) for p in passes] == [list(range(ROWS))] * 2 and passes[0] != passes[1]
    for _ in range(3):
        next(first)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = stream(ids, workers=0, hflip=True)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(ROWS // 4):  # the rest of the first pass and most of the second
        assert torch.equal(next(resumed), next(first))
    assert resumed.counters() == first.counters() == {"data_read": 44, "data_skipped": 0}


def test_a_checkpoint_of_the_earlier_datasets_reader_starts_a_new_pass_with_its_counts(ids):
    resumed = stream(ids, workers=0)
    with pytest.warns(UserWarning, match="data position is from an older reader"):
        resumed.load_state_dict({"loader": {}, "read": 40, "skipped": 1})
    assert sorted(read_rows(resumed, ROWS // 4)) == list(range(ROWS))
    assert resumed.counters() == {"data_read": 72, "data_skipped": 1}


@pytest.mark.parametrize("flips", ["staged", "row by row"])
def test_batches_are_the_prepared_pixels_with_per_sample_random_flips(ids, monkeypatch, flips):
    """Small images' flipped rows are mirrored in one op per batch, larger ones one by one."""
    if flips == "row by row":
        monkeypatch.setattr(prepared_stream, "STAGED_FLIP_MAX_BYTES", 0)
    plain = next(stream(ids, batch=ROWS, workers=0))
    flipped = next(stream(ids, batch=ROWS, workers=0, hflip=True))
    pixels = torch.from_numpy(np.concatenate([np.load(ids / f"shard-0000{i}.npy") for i in range(4)]))
    assert sorted(row_ids(plain)) == list(range(ROWS)) and flipped.dtype == torch.uint8
    by_id = {row: image for row, image in zip(row_ids(pixels), pixels)}
    assert all(torch.equal(image, by_id[row]) for row, image in zip(row_ids(plain), plain))
    assert all(torch.equal(f, p) or torch.equal(f, p.flip(-1)) for f, p in zip(flipped, plain))
    asymmetric = [(f, p) for f, p in zip(flipped, plain) if not torch.equal(p, p.flip(-1))]
    mirrored = [not torch.equal(f, p) for f, p in asymmetric]
    assert len(asymmetric) > ROWS // 2 and any(mirrored) and not all(mirrored)


@pytest.mark.parametrize("flag, value, named", [
    ("--resolution", ("64",), "--resolution 64: the data was prepared with --resolution 32"),
    ("--celeba-crop", ("108",), "--celeba-crop 108: the data was prepared with --celeba-crop 0"),
    ("--alpha-background", ("0", "0", "0"), "--alpha-background 0 0 0: the data was prepared with --alpha-background 255 255 255"),
])
def test_a_run_whose_decoding_flags_differ_from_the_preparation_is_refused_in_one_line(ids, tmp_path, flag, value, named):
    flags = {"--resolution": ("32",), flag: value}
    args = [item for name, values in flags.items() for item in (name, *values)]
    result = train_in_process("train/dcgan.py", "--debug", "--data", f"prepared:{ids}", *args, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {named} (--data prepared:{ids}); train with the prepared value, or prepare the source again with yours"
    assert not (tmp_path / "run").exists()


def test_the_configuration_checks_refuse_a_mismatch_before_anything_is_built(ids):
    from train.dcgan import DCGANConfig
    from train.run.checks import check_data_and_model
    from train.run.flags import ConfigError

    check_data_and_model(DCGANConfig(data=f"prepared:{ids}", resolution=32, model="dcgan"))
    with pytest.raises(ConfigError, match=r"^--resolution 64: the data was prepared with --resolution 32 "):
        check_data_and_model(DCGANConfig(data=f"prepared:{ids}", resolution=64, model="dcgan"))


@pytest.mark.parametrize("damage", ["a flipped byte", "truncated"])
def test_a_damaged_shard_is_skipped_counted_and_named(ids, tmp_path, damage):
    folder = tmp_path / "pixels"
    folder.mkdir()
    for path in ids.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    shard = folder / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    if damage == "a flipped byte":
        data[-1] ^= 1
    shard.write_bytes(bytes(data) if damage == "a flipped byte" else bytes(data[: len(data) // 2]))
    source = stream(folder, batch=8, workers=0)
    with pytest.warns(PreparedShardWarning, match=r"skipped the 8 images of .*shard-00001\.npy"):
        rows = read_rows(source, 3)  # the whole first pass: 24 readable rows
    assert sorted(rows) == [r for r in range(ROWS) if not 8 <= r < 16]
    assert source.counters() == {"data_read": 32, "data_skipped": 8}
    read_rows(source, 3)  # counted again in every pass, as unreadable rows of the other sources are
    assert source.counters() == {"data_read": 64, "data_skipped": 16}


def test_a_share_whose_shards_all_fail_their_check_stops_in_one_line(ids, tmp_path):
    folder = tmp_path / "pixels"
    folder.mkdir()
    for path in ids.iterdir():
        (folder / path.name).write_bytes(path.read_bytes()[:-1] if path.suffix == ".npy" else path.read_bytes())
    with pytest.warns(PreparedShardWarning), pytest.raises(DataError, match=(
            r"every shard of this process's share failed its check \(96 rows skipped, named in the warnings above\);"
            r" restore those files, or prepare the data again$")):
        next(stream(folder, workers=0))


def test_the_cli_prepares_an_image_folder_and_says_how_to_train_from_it(tmp_path, capsys):
    folder = write_image_folder(tmp_path / "faces", rows=6)
    assert data_main(["prepare", str(folder), "--resolution", "32", "--to", str(tmp_path / "pixels"), "--workers", "1"]) == 0
    said = capsys.readouterr()
    assert f"prepared 6 images (0 unreadable rows skipped) in 1 shards at {tmp_path / 'pixels'}" in said.out
    assert f"prepare {tmp_path / 'pixels'}: 6img" in said.err  # the progress bar counts the worker's rows
    assert sorted(read_rows(stream(tmp_path / "pixels", batch=6, workers=0), 1)) == list(range(6))
    assert data_main(["prepare", str(folder), "--resolution", "0", "--to", str(tmp_path / "other")]) == 2
