"""train/gan/reconstruction.py: MSE, and LPIPS only with its backbone weights on disk."""
import pytest
import torch
from torch.nn import functional as F
from torchvision.models import vgg16

from train.gan.reconstruction import (
    LPIPSLoss,
    check_lpips_weights,
    reconstruction_loss,
    vgg16_weights_path,
)


def test_mse_is_the_mean_squared_error_in_fp32():
    a, b = torch.randn(2, 3, 8, 8).half(), torch.randn(2, 3, 8, 8).half()
    loss = reconstruction_loss("mse", torch.device("cpu"))(a, b)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.mse_loss(a.float(), b.float()))


def test_lpips_without_its_weights_names_the_file_the_url_and_the_alternative(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, url = vgg16_weights_path()
    assert path == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    with pytest.raises(FileNotFoundError) as error:
        check_lpips_weights()
    message = str(error.value)
    assert str(path) in message and url in message and "--recon-loss mse" in message
    with pytest.raises(FileNotFoundError):
        LPIPSLoss(torch.device("cpu"))


@pytest.mark.slow
def test_lpips_with_weights_on_disk_is_a_differentiable_distance(tmp_path, monkeypatch):
    """Backbone weights written here (random, not ImageNet's: the real file is 528 MB and the hub
    is unreachable) stand where torchvision's cache keeps them; torchmetrics' own linear layers."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, _ = vgg16_weights_path()
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    # LPIPS reads only the convolutions; the classifier's 124M weights (490 MB of the file) are saved
    # as one broadcast zero each, which torchvision's load_state_dict copies out to their shapes.
    weights = {name: value if name.startswith("features.") else torch.zeros(()).expand(value.shape)
               for name, value in vgg16().state_dict().items()}
    torch.save(weights, path)
    loss = LPIPSLoss(torch.device("cpu"))
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    reconstruction = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    distance = loss(reconstruction, target)
    distance.backward()
    assert distance.item() > 0 and reconstruction.grad.abs().sum() > 0
