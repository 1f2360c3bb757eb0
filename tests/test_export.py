"""models/export.py and `python -m train.export`: each trainer's generator exported to ONNX and
TorchScript runs like the module at batch sizes it was not exported at; an operator a format cannot
express is refused in one line naming it. (bench/export_matrix.py: all trainers at 64 and 256 px.)

The first ONNX export of a process costs 5-9 s on 2 busy cores (onnxscript's import, torch.export's
warm-up) and each further one 1-3 s, so ONNX is exported here once: the session's lightweight GAN
run (attention, GLU, skip-layer excitation, trained BatchNorm statistics: the generator whose ops
need the most care) through the CLI. Every trainer's generator goes through TorchScript."""
import re

import onnx
import pytest
import torch

from models import build_models
from models.export import UnexportableOperator, export_generator, max_difference, run_exported
from tests.conftest import completed, in_process
from train.export import main
from train.run.finished import FinishedRun

LATENT_DIM = 32
TINY = {"resolution": 64, "latent_dim": LATENT_DIM, "channel_base": 512, "channel_max": 32}
TRAINER_MODELS = {"wgangp": ("resnet", {}), "dcgan": ("dcgan", {}), "lightweight": ("lightweight", {"attn_resolutions": (16,)})}


def export_cli(*args: str):
    return in_process("train/export.py", args, lambda: main(list(args)))


def generator_with_trained_statistics(model: str, options: dict) -> torch.nn.Module:
    """A 64 px generator of random weights whose BatchNorm running statistics are far from their
    initial (0, 1): a graph that normalised by the batch's own statistics would then differ."""
    torch.manual_seed(0)
    generator, _ = build_models(model, **TINY, **options)
    for norm in (m for m in generator.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        norm.running_mean.normal_(0, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    return generator


@pytest.mark.parametrize(
    "trainer, export_format",
    [("wgangp", "torchscript"), ("dcgan", "torchscript"), ("lightweight", "torchscript")],
)
def test_each_trainers_generator_runs_as_exported_at_any_batch_size(tmp_path, trainer, export_format):
    model, options = TRAINER_MODELS[trainer]
    generator = generator_with_trained_statistics(model, options)
    path = tmp_path / f"g.{'onnx' if export_format == 'onnx' else 'pt'}"
    export_generator(generator, LATENT_DIM, export_format, path)  # at batch 2
    for batch in (1, 5):
        latents = torch.randn(batch, LATENT_DIM)
        assert max_difference(generator, path, export_format, latents) <= 1e-4
        assert run_exported(path, export_format, latents).shape == (batch, 3, 64, 64)
    # The check can fail: the same file against other weights differs by far more than the limit.
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(0.1)
    assert max_difference(generator, path, export_format, torch.randn(3, LATENT_DIM)) > 1e-2


def exported_by_the_cli(run, output, export_format: str) -> None:
    """`python -m train.export` on `run`: it prints the difference it measured, and the file runs
    like the run's EMA generator at a batch size of its own choosing."""
    result = completed(export_cli("--run", str(run), "--format", export_format, "--output", str(output)))
    printed = float(re.search(r"max \|exported - PyTorch\| = (\S+) over", result.stdout).group(1))
    assert 0 <= printed <= 1e-4
    finished = FinishedRun(run)
    generator, _ = finished.ema_generator()
    assert max_difference(generator, output, export_format, torch.randn(7, finished.config.latent_dim)) <= 1e-4


@pytest.mark.slow  # a lightweight run to train (5 s) and onnx to import: the whole suite runs it, the inner loop need not
def test_the_cli_exports_the_lightweight_run_to_onnx_with_a_symbolic_batch(lightweight_run, tmp_path):
    exported_by_the_cli(lightweight_run, tmp_path / "G.onnx", "onnx")
    batch = onnx.load(str(tmp_path / "G.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # symbolic, not a recorded size


def test_the_cli_exports_the_wgangp_run_to_torchscript(wgangp_run, tmp_path):
    exported_by_the_cli(wgangp_run, tmp_path / "G.pt", "torchscript")


class SingularValues(torch.nn.Module):
    """A 'generator' through torch.linalg.svd, which torch.onnx has no translation for (torch 2.14)."""

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(latents.reshape(len(latents), 4, -1)).S


def test_an_operator_onnx_cannot_express_is_refused_in_one_line_naming_it(tmp_path):
    with pytest.raises(UnexportableOperator) as refused:
        export_generator(SingularValues(), 16, "onnx", tmp_path / "g.onnx")
    assert refused.value.operator == "aten._linalg_svd.default"
    assert "\n" not in str(refused.value) and "aten._linalg_svd" in str(refused.value)
    assert not (tmp_path / "g.onnx").exists()


@pytest.mark.parametrize("export_format, name", [("onnx", "G.pt"), ("torchscript", "G.onnx")])
def test_a_file_extension_that_is_not_the_formats_is_refused_before_any_work(wgangp_run, tmp_path, export_format, name):
    result = export_cli("--run", str(wgangp_run), "--format", export_format, "--output", str(tmp_path / name))
    assert result.returncode == 2 and result.stderr.startswith("error: --output") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / name).exists()
