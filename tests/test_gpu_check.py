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
    assert set(report["seconds"]) == {"environment", "correctness", "speed", "options", "lucidrains", "deepspeed"}
    assert report["environment"]["torch"] and report["environment"]["accelerate"]
    overflow = report["correctness"]["fp16_overflow"]
    assert overflow["ok"] and overflow["skipped_steps"] >= 3 and overflow["final_scale"] < 2**24
    assert "skipped" in report["correctness"]["tests/test_gpu.py"]["summary"]  # no GPU here: every GPU test skips
    # Each part measured its first rows; a row its time box left out says so (a loaded machine).
    def measured(rows: list[dict]) -> list[dict]:
        assert all("img_per_s" in r or r["error"].startswith("not") or "create_graph" in r["error"] for r in rows), rows
        return [r for r in rows if "img_per_s" in r]

    speed = measured(report["speed"]["rows"])
    assert ("wgangp", "no") in {(r["trainer"], r["precision"]) for r in speed}
    for row in speed:
        assert row["img_per_s"] > 0 and row["critic_ms"] > 0 and row["generator_ms"] > 0 and row["tflop_per_step"] > 0
    options = report["options"]["rows"]
    assert [r["options"] for r in options] == ["defaults", "channels_last=True", "fused_adam=False", "defaults",
                                               "tf32=False", "compile generator", "compile critic"]
    assert all("speed_vs_defaults" in r for r in measured(options)) and "img_per_s" in options[0]
    # the critic cannot be compiled under the penalty's double backward: the report says why
    assert "create_graph" in options[-1]["error"] or options[-1]["error"].startswith("not")
    engines = {r["engine"]: r for r in report["deepspeed"]["rows"]}
    assert engines["DDP"]["img_per_s"] > 0 and engines["ZeRO-2"]["img_per_s"] > 0  # the trainer under both
    assert "| trainer | px | precision |" in (tmp_path / "report.md").read_text()
    assert "# GPU check:" in result.stdout


def test_without_a_gpu_the_full_check_is_refused_with_the_way_to_run_it(capsys):
    from bench.gpu_check import CUDA, main

    if CUDA:
        pytest.skip("a GPU is here: the full check would run")
    assert main([]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err
