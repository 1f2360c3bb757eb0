"""train/run/profiling.py: --profile N leaves a trace Perfetto/TensorBoard open and prints the top operators."""
import json

import pytest

from tests.conftest import completed
from train.run.config import ConfigError, load_config
from train.wgangp import WGANGPConfig


@pytest.mark.slow
def test_profile_writes_a_chrome_trace_of_the_asked_steps_and_prints_the_top_operators(run, tmp_path):
    out = tmp_path / "p"
    result = completed(run("train/wgangp.py", "--debug", "--profile", "1", "--max-steps", "4", "--out", str(out)))
    assert "top operators over the profiled steps" in result.stdout and "aten::" in result.stdout
    (trace,) = (out / "profile").glob("rank0.*.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]  # the Chrome trace format Perfetto reads
    steps = sorted({e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")})
    assert steps == ["ProfilerStep#3"]  # after 1 skipped and 2 warm-up steps
    assert any(e.get("name") == "aten::convolution_backward" for e in events)


def test_a_profile_longer_than_the_run_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"--profile 40: the profile ends at step 43 .* raise --max-steps"):
        load_config(WGANGPConfig, ["--debug", "--profile", "40", "--out", str(tmp_path / "r")], "test")
    assert not (tmp_path / "r").exists()
