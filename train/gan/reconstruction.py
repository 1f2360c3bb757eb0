"""Reconstruction losses for the discriminator's decoders: MSE, or LPIPS (the paper's) from
torchmetrics when torchvision's VGG16 weights are on disk (they cannot be fetched mid-run on a
cluster without internet, so their absence is an error before training, not a download attempt)."""
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

RECON_LOSSES = ("mse", "lpips")
ReconLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(reconstruction.float(), target.float())


def vgg16_weights_path() -> tuple[Path, str]:
    """Where torchvision looks for the VGG16 ImageNet weights LPIPS builds on, and their URL."""
    from torchvision.models import VGG16_Weights

    url = VGG16_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name, url


def check_lpips_weights() -> None:
    """Raise FileNotFoundError naming the file, where to put it and the alternative."""
    path, url = vgg16_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"--recon-loss lpips needs torchvision's VGG16 weights at {path}: download {url} to that path"
            " (or set TORCH_HOME to a directory holding hub/checkpoints/" + path.name + "), or use --recon-loss mse"
        )


class LPIPSLoss:
    """Mean LPIPS (VGG) distance between images in [-1, 1], differentiable in the first argument."""

    def __init__(self, device: torch.device):
        check_lpips_weights()
        # torchmetrics' LPIPS module itself: its functional form rebuilds the network on every call.
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        self.net = _NoTrainLpips(net="vgg").to(device)

    def __call__(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.net(reconstruction.float(), target.float()).mean()


def reconstruction_loss(kind: str, device: torch.device) -> ReconLoss:
    if kind == "mse":
        return mse
    if kind == "lpips":
        return LPIPSLoss(device)
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {', '.join(RECON_LOSSES)}")
