"""Every trainer's generator exported to ONNX and TorchScript at 64 and 256 px, and how far the
exported file's samples are from PyTorch's (models/export.py; `python -m train.export` checks a
run's file the same way).

    python bench/export_matrix.py [--resolutions 64 256] [--formats onnx torchscript]

Each generator is its recipe's default (its config's model options at that resolution: WGAN-GP's
ResNet, the tutorial DCGAN, the lightweight GAN with its default attention), of random weights
with BatchNorm running statistics set away from (0, 1), as after training. The difference is the
largest |exported - PyTorch| over 5 latents and over 1 (neither the export's example batch of 2).
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.measure import significant
from models.export import FORMATS, SUFFIXES, export_generator, max_difference
from train.dcgan import DCGANConfig
from train.lightweight_gan import LightweightGANConfig
from train.run.config import resolve_config
from train.run.networks import build_networks
from train.wgangp import WGANGPConfig

RECIPES = {"WGAN-GP": WGANGPConfig, "DCGAN": DCGANConfig, "lightweight GAN": LightweightGANConfig}


def recipe_generator(config_cls: type, resolution: int, out: str) -> tuple[torch.nn.Module, int]:
    """The recipe's default generator at `resolution`, BatchNorm statistics as a trained one's."""
    config = resolve_config(config_cls, {"resolution": resolution, "out": out})
    generator, _ = build_networks(config)
    for norm in (m for m in generator.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        norm.running_mean.normal_(0, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    return generator.eval(), config.latent_dim


def row(name: str, config_cls: type, resolution: int, export_format: str, folder: Path) -> str:
    generator, latent_dim = recipe_generator(config_cls, resolution, str(folder / "out"))
    path = folder / f"g{SUFFIXES[export_format][0]}"
    start = time.perf_counter()
    export_generator(generator, latent_dim, export_format, path)
    seconds = time.perf_counter() - start
    rng = torch.Generator().manual_seed(0)
    differences = [max_difference(generator, path, export_format, torch.randn(b, latent_dim, generator=rng)) for b in (5, 1)]
    params = sum(p.numel() for p in generator.parameters()) / 1e6
    return (f"| {name} | {resolution} | {params:.1f} M | {export_format} | {significant(seconds)} s"
            f" | {path.stat().st_size / 1e6:.0f} MB | {max(differences):.2g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    args = parser.parse_args()
    print("| trainer | px | generator | format | export | file | max abs difference |")
    print("|---|---|---|---|---|---|---|")
    for resolution in args.resolutions:
        for name, config_cls in RECIPES.items():
            for export_format in args.formats:
                with tempfile.TemporaryDirectory() as folder:
                    print(row(name, config_cls, resolution, export_format, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
