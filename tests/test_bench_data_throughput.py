"""bench/data_throughput.py's decode table: the options that take the reading and the flips away
(what stands in the way at 1024 px, README) must do just that, and the table must still print."""
import sys

import pytest
import torch

from bench.data_throughput import Pipeline, main, write_shards
from train.data.decode import decode_image


def test_with_rows_from_memory_the_worker_decodes_the_loops_own_jpegs_in_their_order(tmp_path):
    glob, blobs = write_shards(tmp_path, images=4)
    # warmed up over 64 images: their CPU time, above 0.1 s, is some of the kernel's 10-ms clock ticks
    pipeline = Pipeline(glob, 32, workers=1, warmup=64, batch=8, hflip=False, rows_from=blobs)
    try:
        images = torch.cat([next(pipeline.stream) for _ in range(2)])
        assert pipeline.worker_cpu > 0 and pipeline.rank_cpu >= 0
    finally:
        pipeline.stream.close()
    loop = [decode_image(blob, 32) for blob in blobs]
    # the parquet rows would come shuffled; these cycle through the JPEGs as the loop does
    first = next(i for i, image in enumerate(loop) if torch.equal(image, images[0]))
    assert all(torch.equal(image, loop[(first + i) % len(loop)]) for i, image in enumerate(images))


def test_the_decode_table_and_its_cpu_times_print_without_reading_or_flips(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["data_throughput.py", "--images", "4", "--resolutions", "32", "--workers", "1", "--batch", "8",
                                      "--warmup", "16", "--timed", "64", "--repeats", "1", "--prepared", "--rows-from-memory", "--no-flips"])
    main()
    out = capsys.readouterr().out
    assert "no flips, the workers taking the JPEGs from memory" in out
    rates, cpu = out.split("CPU time an image")
    assert "\n| 32 | " in rates
    row = cpu.split("\n| 32 | ")[1].splitlines()[0].rstrip(" |").split(" | ")
    loop_ms, (worker_ms, rank_ms), share = float(row[0].split()[0]), row[1].removesuffix(" ms").split(" / "), float(row[2])
    assert loop_ms > 0 and float(worker_ms) > 0 and float(rank_ms) >= 0 and share > 0


def test_no_decoding_workers_is_refused_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["data_throughput.py", "--workers", "0", "1"])
    with pytest.raises(SystemExit):
        main()
    assert "--workers 0 1: the table compares decoding workers with the loop" in capsys.readouterr().err
