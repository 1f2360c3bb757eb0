"""bench/gpu_check.py: the GPU acceptance command runs every part on the CPU, so it cannot rot between GPU loans."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_cpu_smoke_run_exercises_every_part_and_writes_both_reports(tmp_path):
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu-smoke", "--report", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["seconds"]) == {"environment", "correctness", "speed", "options", "lucidrains"}
    assert report["environment"]["torch"] and report["environment"]["accelerate"]
    overflow = report["correctness"]["fp16_overflow"]
    assert overflow["ok"] and overflow["skipped_steps"] >= 3 and overflow["final_scale"] < 2**24
    assert "skipped" in report["correctness"]["tests/test_gpu.py"]["summary"]  # no GPU here: every GPU test skips
    speed = report["speed"]["rows"]
    assert {(r["trainer"], r["precision"]) for r in speed} >= {("wgangp", "no"), ("wgangp", "fp16"), ("wgangp", "bf16")}
    for row in speed:
        assert row["img_per_s"] > 0 and row["critic_ms"] > 0 and row["generator_ms"] > 0 and row["tflop_per_step"] > 0
    options = {r["options"]: r for r in report["options"]["rows"]}
    assert {"channels_last=True", "fused_adam=False", "tf32=False", "compile generator"} <= set(options)
    assert "speed_vs_defaults" in options["channels_last=True"]
    # the critic cannot be compiled under the penalty's double backward: the report says why
    assert "create_graph" in options["compile critic"]["error"]
    assert "| trainer | px | precision |" in (tmp_path / "report.md").read_text()
    assert "# GPU check:" in result.stdout


def test_without_a_gpu_the_full_check_is_refused_with_the_way_to_run_it(capsys):
    from bench.gpu_check import CUDA, main

    if CUDA:
        pytest.skip("a GPU is here: the full check would run")
    assert main([]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err
