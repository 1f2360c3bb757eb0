"""A generator as a file that runs without this project: ONNX (for onnxruntime and the runtimes that
read it) or TorchScript (torch.jit.load, libtorch), with a dynamic batch dimension, and checked by
running the file against the module it came from.

- The module is exported in eval mode: BatchNorm then uses its running statistics (the exported
  graph holds no batch coupling, so any batch size gives each sample its own image) and the
  lightweight GAN's noise injection is off, as when generate.py samples.
- ONNX goes through torch 2.x's dynamo exporter (torch.export, then onnxscript's translations); the
  batch is a symbolic dimension (dynamic_shapes), not a recorded constant.
- TorchScript is a trace: the generators have no data-dependent control flow, and einops'
  rearrange traces to reshapes of the actual sizes, which stay symbolic in the batch.
- Both are exported at EXAMPLE_BATCH and verified at another batch size, which is what proves the
  batch dimension dynamic.
"""
import re
import warnings
from pathlib import Path

import torch
from torch import nn

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts")}
EXAMPLE_BATCH = 2  # not 1: torch.export specialises a dimension of size 1 to a constant
MAX_DIFFERENCE = 1e-4  # float32 rounding of a reordered graph stays orders of magnitude below it


class UnexportableOperator(RuntimeError):
    """The generator holds an operator the format cannot express; `operator` names it."""

    def __init__(self, export_format: str, operator: str, reason: str):
        super().__init__(f"the generator's operator {operator} cannot be exported to {export_format} ({reason})")
        self.operator = operator


def export_generator(generator: nn.Module, latent_dim: int, export_format: str, path: Path) -> None:
    """Write `generator` (latents (B, latent_dim) -> samples) to `path` in `export_format`."""
    generator = generator.eval()
    example = torch.randn(EXAMPLE_BATCH, latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if export_format == "onnx":
            _export_onnx(generator, example, path)
        elif export_format == "torchscript":
            _export_torchscript(generator, example, path)
        else:
            raise ValueError(f"unknown export format {export_format!r}; choose one of {', '.join(FORMATS)}")


def _export_onnx(generator: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            generator, (example,), dynamo=True, verbose=False, input_names=["latents"], output_names=["samples"],
            dynamic_shapes=({0: batch},),
        )
    except Exception as error:  # the exporter's own error classes are private (torch.onnx._internal)
        raise unexportable("onnx", error) from error
    # One file: the weights inline (protobuf's 2 GB limit is far above these generators).
    program.save(str(path), external_data=False)


def _export_torchscript(generator: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # torch 2.14 marks torch.jit deprecated; the format is still what libtorch and older stacks load.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        # LinearAttention unpacks q, k, v from a dimension of fixed size 3, which the tracer warns of;
        # whatever a trace bakes in wrongly, the verification at another batch size would catch.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            traced = torch.jit.trace(generator, example, check_trace=False)  # verify() checks it at another batch
        except Exception as error:
            raise unexportable("torchscript", error) from error
        torch.jit.save(traced, str(path))


def unexportable(export_format: str, error: BaseException) -> UnexportableOperator:
    """The operator an export failed on, from the chain of errors the exporter raised: the graph
    node it was translating (`target=torch.ops.aten.X.default`), else the innermost message."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    messages = [str(e) for e in chain]
    operators = [m.group(1) for text in messages for m in [re.search(r"target=torch\.ops\.([\w.]+)", text)] if m]
    operator = operators[-1] if operators else "unknown"
    reason = next((line.strip() for line in messages[-1].splitlines() if line.strip()), type(chain[-1]).__name__)
    return UnexportableOperator(export_format, operator, reason)


def run_exported(path: Path, export_format: str, latents: torch.Tensor) -> torch.Tensor:
    """The exported file's samples for `latents`: onnxruntime on the CPU, or torch.jit.load."""
    if export_format == "onnx":
        import onnxruntime  # here: seconds of import, and only this format needs it

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (samples,) = session.run(None, {session.get_inputs()[0].name: latents.numpy()})
        return torch.from_numpy(samples)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(latents)


def max_difference(generator: nn.Module, path: Path, export_format: str, latents: torch.Tensor) -> float:
    """The largest |exported - PyTorch| over the samples of `latents` (on the CPU, in eval mode)."""
    generator = generator.eval().cpu()
    with torch.no_grad():
        expected = generator(latents)
    return (run_exported(path, export_format, latents) - expected).abs().max().item()
