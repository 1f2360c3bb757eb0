"""bench/gpu_check.py: the GPU acceptance command. Its own parts (environment, the fp16 overflow
check, the speed rows) run here on the CPU, so they cannot rot between GPU loans; the report of a
whole `--cpu-smoke` run (tests/data/gpu_check_cpu_smoke.json, made by `python bench/gpu_check.py
--cpu-smoke`) is rendered and checked. The options, lucidrains and DeepSpeed parts time what
tests/test_zero.py, tests/test_precision.py and tests/test_lightweight.py prove."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CANNED = ROOT / "tests" / "data" / "gpu_check_cpu_smoke.json"


def measured(rows: list[dict]) -> list[dict]:
    """The rows a part measured; a row its time box left out says so (a loaded machine)."""
    assert all("img_per_s" in r or r["error"].startswith("not") or "create_graph" in r["error"] for r in rows), rows
    return [r for r in rows if "img_per_s" in r]


def test_the_cpu_smoke_parts_measure_the_trainer_and_force_an_fp16_overflow(tmp_path, capsys):
    from bench.gpu_check import main

    assert main(["--cpu-smoke", "--parts", "environment", "correctness", "speed", "--report", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["seconds"]) == {"environment", "correctness", "speed"}
    assert report["environment"]["torch"] and report["environment"]["accelerate"]
    overflow = report["correctness"]["fp16_overflow"]
    assert overflow["ok"] and overflow["skipped_steps"] >= 3 and overflow["final_scale"] < 2**24
    summary = report["correctness"]["tests/test_gpu.py"]["summary"]
    assert "skipped" in summary or summary == "not finished: time box"  # no GPU here: every GPU test skips
    speed = measured(report["speed"]["rows"])
    assert ("wgangp", "no") in {(r["trainer"], r["precision"]) for r in speed}
    for row in speed:
        assert row["img_per_s"] > 0 and row["critic_ms"] > 0 and row["generator_ms"] > 0 and row["tflop_per_step"] > 0
    assert "| trainer | px | precision |" in (tmp_path / "report.md").read_text()
    assert "# GPU check:" in capsys.readouterr().out


def test_a_whole_smoke_report_renders_every_part():
    from bench.gpu_check import PARTS, markdown

    report = json.loads(CANNED.read_text())
    assert set(report["seconds"]) == set(PARTS)
    options = report["options"]["rows"]
    assert [r["options"] for r in options] == ["defaults", "channels_last=True", "fused_adam=False", "defaults", "tf32=False",
                                               "penalty convolutions rewritten", "compile generator", "compile critic"]
    assert all("speed_vs_defaults" in r for r in measured(options)) and "img_per_s" in options[0]
    # the critic cannot be compiled under the penalty's double backward: the report says why
    assert "create_graph" in options[-1]["error"] or options[-1]["error"].startswith("not")
    engines = {r["engine"]: r for r in report["deepspeed"]["rows"]}
    assert engines["DDP"]["img_per_s"] > 0 and engines["ZeRO-2"]["img_per_s"] > 0  # the trainer under both
    text = markdown(report)
    for title in ("## Correctness", "## Speed", "## Options", "## Lightweight GAN against lucidrains'",
                  "## DeepSpeed against DDP", "## Data: JPEG decode on the device, prepared shards, a trainer's wait", "## Time per part (s)"):
        assert title in text
    assert "| trainer | px | precision |" in text and "create_graph" in text
    assert all(f"| {r['trainer']} | {r['resolution']} |" in text for r in report["speed"]["rows"])
    decode, prepared, wait = report["data"]["tables"]
    assert "| output px | 1 CPU core, decode_image | decode_jpeg batches |" in decode and "\n| 64 |" in decode
    assert "| prepared / copy-only |" in prepared and "\n| 64 |" in prepared
    assert "| data_wait_frac, median window |" in wait and "\n| 1 | " in wait and "failed" not in wait


def test_the_data_parts_benches_run_without_datasets_which_the_gpu_machine_lacks(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # an import of it now fails
    for module in ("bench.data_throughput", "bench.decode_device"):
        monkeypatch.delitem(sys.modules, module, raising=False)  # imported afresh, below
    from bench import data_throughput, decode_device

    monkeypatch.setattr(sys, "argv", ["decode_device.py", "--device", "cpu", "--resolutions", "32", "--images", "2",
                                      "--batch", "2", "--repeats", "1"])
    assert decode_device.main() == 0
    monkeypatch.setattr(sys, "argv", ["data_throughput.py", "--resolutions", "--prepared", "32", "--images", "2",
                                      "--prepared-images", "128", "--prepared-timed", "256", "--prepared-batch", "32", "--repeats", "1"])
    data_throughput.main()
    out = capsys.readouterr().out
    assert "\n| 32 | " in out.split("decode_jpeg batches")[1] and "\n| 32 | " in out.split("prepared / copy-only")[1]
    row = out.split("levels from decode_image, most / mean |")[1].split("\n| 32 | ")[1].splitlines()[0]
    most, mean = map(float, row.rstrip(" |").rsplit("| ", 1)[1].split(" / "))
    assert most <= 16 and mean <= 1.5  # tests/test_device_decode.py's bound, on the bench's own JPEGs


def test_without_a_gpu_the_full_check_is_refused_with_the_way_to_run_it(capsys):
    from bench.gpu_check import CUDA, main

    if CUDA:
        pytest.skip("a GPU is here: the full check would run")
    assert main([]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err


def test_a_part_that_breaks_is_reported_and_the_report_survives_a_check_stopped_midway(tmp_path, monkeypatch, capsys):
    """The first run on a lent GPU must come back with what it measured: a part that raises is a
    finding (the parts after it still run), and the report is on disk after every part, so a check
    killed from outside (a timeout, here an interrupt) keeps the parts before it."""
    from bench import gpu_check

    def broken(box, sizes):
        raise RuntimeError("a part broke")

    monkeypatch.setattr(gpu_check, "speed", broken)
    assert gpu_check.main(["--cpu-smoke", "--parts", "environment", "speed", "--report", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["seconds"]) == {"environment", "speed"} and report["environment"]["torch"]
    assert "RuntimeError: a part broke" in report["errors"]["speed"]
    assert "## speed: failed" in (tmp_path / "report.md").read_text()

    def interrupted(box, sizes):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_check, "speed", interrupted)
    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(["--cpu-smoke", "--parts", "environment", "speed", "--report", str(stopped)])
    report = json.loads((stopped / "report.json").read_text())
    assert set(report["seconds"]) == {"environment"} and report["environment"]["accelerate"]
    assert not [path.name for path in stopped.iterdir() if ".tmp" in path.name]
    capsys.readouterr()


def test_the_speed_rows_are_measured_bf16_first_and_reported_in_table_order(monkeypatch):
    """A time box that runs out then leaves a precision out, not a trainer or a resolution."""
    from bench import gpu_check

    calls = []

    def fake_measure(row, sizes, peak):
        calls.append(row)
        return {"trainer": row.trainer, "resolution": row.resolution, "precision": row.precision, "img_per_s": 1.0}

    monkeypatch.setattr(gpu_check, "measure_or_reason", fake_measure)
    monkeypatch.setattr(gpu_check, "matmul_peak", lambda n: 1.0)
    sizes = gpu_check.gpu_sizes()
    result = gpu_check.speed(gpu_check.TimeBox(60), sizes)
    precisions = [row.precision for row in calls]
    assert precisions == sorted(precisions, key=["bf16", "fp16", "no"].index) and len(calls) == len(sizes.rows)
    assert {(row.trainer, row.resolution) for row in calls[: precisions.count("bf16")]} == {(r.trainer, r.resolution) for r in sizes.rows}
    assert [(r["trainer"], r["resolution"], r["precision"]) for r in result["rows"]] == [
        (row.trainer, row.resolution, row.precision) for row in sizes.rows]


def test_a_command_past_its_time_box_is_killed_with_the_processes_it_started(tmp_path):
    """A timed-out torchrun must not leave its trainer on the GPU for the parts after it."""
    import psutil

    from bench.gpu_check import finish, start

    child = "import subprocess, sys, time; print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']).pid, flush=True); time.sleep(600)"
    process = start([sys.executable, "-c", child])
    grandchild = psutil.Process(int(process.stdout.readline()))  # started: the line says so
    with pytest.raises(subprocess.TimeoutExpired):
        finish(process, timeout=0.01)
    assert process.returncode is not None
    grandchild.wait(timeout=60)  # psutil.TimeoutExpired while it runs on

    def interrupted(timeout=None):
        raise KeyboardInterrupt  # a Ctrl-C while the check waits: its own session does not get it

    process = start([sys.executable, "-c", child])
    grandchild = psutil.Process(int(process.stdout.readline()))
    process.communicate = interrupted
    with pytest.raises(KeyboardInterrupt):
        finish(process, timeout=600)
    grandchild.wait(timeout=60)
