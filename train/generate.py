"""Write samples from a run's EMA generator.

    python train/generate.py --run DIR --n N --output FILE

Image runs write a PNG grid; toy runs write a .npy array of shape (N, 2) in data coordinates
(or, with a .png output, a scatter plot over the true modes).
"""
import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

if __spec__ is None:  # run as a file: import the project's packages, not train/'s siblings by bare name
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from train.checkpoint import latest_checkpoint, load_ema_weights  # noqa: E402
from train.data import parse_data_spec, toy_modes  # noqa: E402
from train.ema import ema_generator_weights  # noqa: E402
from train.loop import build_networks, render_samples  # noqa: E402
from train.samples import save_samples  # noqa: E402


def read_run_config(run: Path) -> SimpleNamespace:
    config_path = run / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"error: --run {run}: no config.json there; point --run at a training run's --out folder")
    return SimpleNamespace(**json.loads(config_path.read_text()))


def load_ema_generator(run: Path, config: SimpleNamespace, checkpoint: Path | None = None) -> torch.nn.Module:
    checkpoint = checkpoint or latest_checkpoint(run)
    if checkpoint is None:
        raise SystemExit(f"error: --run {run}: no checkpoint in {run / 'checkpoints'}; train longer or pass --checkpoint")
    generator, _ = build_networks(config)
    generator.load_state_dict(ema_generator_weights(load_ema_weights(checkpoint)))
    return generator


def generate(run: Path, n: int, output: Path, seed: int = 0, checkpoint: Path | None = None, device: str = "cpu") -> None:
    config = read_run_config(run)
    spec = parse_data_spec(config.data) if config.data.startswith("toy:") else None
    if output.suffix not in (".png", ".npy") or (output.suffix == ".npy" and spec is None):
        allowed = ".npy or .png" if spec else ".png"
        raise SystemExit(f"error: --output {output}: this run writes {allowed} files; change the file extension")
    if n < 1:
        raise SystemExit(f"error: --n {n}: must be at least 1")
    generator = load_ema_generator(run, config, checkpoint).to(device)
    noise = torch.randn(n, config.latent_dim, generator=torch.Generator().manual_seed(seed))
    samples = render_samples(generator, noise)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".npy":
        np.save(output, samples.numpy())
    else:
        modes, std = toy_modes(spec.name) if spec else (None, 0.0)
        save_samples(samples, output, modes, std)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the training run's --out folder")
    parser.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    parser.add_argument("--output", type=Path, required=True, help="a .png grid, or .npy points for toy runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents (default: 0)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint folder (default: the latest)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    generate(args.run, args.n, args.output, args.seed, args.checkpoint, args.device)
    print(f"wrote {args.n} samples to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
