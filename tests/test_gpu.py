"""CUDA paths: fp16 and bf16 training steps (skipped on machines without a GPU)."""
import numpy as np
import pytest
import torch

from train.report.metrics import read_metrics
from train.run.precision import resolve_mixed_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_debug_run_trains_with_finite_losses_under_mixed_precision(run, tmp_path, precision):
    out = tmp_path / precision
    result = run("train/wgangp.py", "--debug", "--max-steps", "20", "--mixed-precision", precision, "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    records = read_metrics(out / "metrics.jsonl")
    assert all(np.isfinite(r[k]) for r in records for k in ("d_loss", "g_loss", "gp", "wdist"))
    if precision == "fp16":
        assert records[-1]["skipped_steps"] < 20  # the scaler settles instead of skipping every step


@pytest.mark.parametrize("resolution", [64, 256, 1024])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_lightweight_gan_trains_with_finite_losses_under_mixed_precision(run, tmp_path, precision, resolution):
    out = tmp_path / f"{precision}-{resolution}"
    result = run(
        "train/lightweight_gan.py", "--debug", "--max-steps", "10", "--resolution", str(resolution),
        "--batch-size", "4", "--gp-weight", "1", "--gp-every", "2", "--mixed-precision", precision, "--out", str(out),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = read_metrics(out / "metrics.jsonl")
    assert all(np.isfinite(r[k]) for r in records for k in ("d_loss", "g_loss", "hinge", "recon", "gp"))


def test_bf16_is_kept_only_where_the_gpu_has_it_natively():
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    if native:
        assert resolve_mixed_precision("bf16", use_cpu=False) == "bf16"
    else:
        with pytest.warns(UserWarning, match="no native bf16"):
            assert resolve_mixed_precision("bf16", use_cpu=False) == "fp16"


def test_fp16_penalty_matches_fp32_on_the_gpu():
    from train.gan.penalty import gradient_penalty

    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).cuda()
    inputs = torch.randn(64, 2, device="cuda")
    exact, _ = gradient_penalty(critic, inputs)
    with torch.autocast("cuda", dtype=torch.float16):
        scaled, _ = gradient_penalty(critic, inputs, scaler=torch.amp.GradScaler("cuda"))
    torch.testing.assert_close(scaled, exact, rtol=2e-2, atol=1e-4)
