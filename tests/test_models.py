"""models/: shapes, widths and the contracts the objectives rely on."""
import pytest
import torch
from torch import nn

from models import IMAGE_RESOLUTIONS, build_models


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["dcgan", "resnet"])
@pytest.mark.parametrize("resolution", IMAGE_RESOLUTIONS)
def test_image_models_map_latents_to_images_and_images_to_scores(name, resolution):
    generator, critic = build_models(name, resolution=resolution, latent_dim=32)
    with torch.no_grad():
        images = generator.eval()(torch.randn(1, 32))
        scores = critic(images)
    assert images.shape == (1, 3, resolution, resolution)
    assert images.abs().max() <= 1.0
    assert scores.shape == (1,)
    # widths fall with resolution, so parameter counts grow slowly: 1024 stays trainable on one GPU
    assert count(generator) < 25e6 and count(critic) < 25e6


def test_resnet_at_64_with_channel_base_4096_has_the_paper_widths():
    generator, critic = build_models("resnet", resolution=64, latent_dim=128, channel_base=4096)
    assert generator.stem.out_features == 4 * 4 * 512  # 8 x dim, dim = 64
    assert [block.shortcut.out_channels for block in generator.blocks] == [512, 256, 128, 64]
    assert critic.from_rgb.out_channels == 64
    assert [block.shortcut[1].out_channels for block in critic.blocks] == [128, 256, 512, 512]


def test_mlp_pair_works_in_data_coordinates():
    generator, critic = build_models("mlp", resolution=64, latent_dim=2)
    points = generator(torch.randn(5, 2))
    assert points.shape == (5, 2)
    assert critic(points).shape == (5,)
    assert sum(isinstance(m, nn.Linear) for m in generator.modules()) == 4


@pytest.mark.parametrize("name", ["dcgan", "resnet", "mlp"])
def test_critics_score_each_sample_independently(name):
    """The gradient penalty is per sample: no batch statistics may couple samples in the critic."""
    _, critic = build_models(name, resolution=64, latent_dim=8, channel_base=512, channel_max=32)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    batch = torch.randn(4, 2) if name == "mlp" else torch.randn(4, 3, 64, 64)
    together = critic(batch)
    alone = torch.cat([critic(sample[None]) for sample in batch])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm, kind", [("layer", nn.GroupNorm), ("instance", nn.GroupNorm), ("none", None)])
def test_critic_norm_is_selectable(norm, kind):
    _, critic = build_models("resnet", resolution=64, latent_dim=8, channel_base=512, critic_norm=norm)
    norms = [m for m in critic.modules() if isinstance(m, nn.GroupNorm)]
    if kind is None:
        assert norms == []
    else:
        assert norms and all((m.num_groups == 1) == (norm == "layer") for m in norms)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "stylegan9", "resolution": 64}, "unknown model 'stylegan9'; choose one of dcgan, resnet, lightweight, mlp"),
        ({"name": "dcgan", "resolution": 96}, "resolution 96 is not supported by 'dcgan'; choose one of 64, 128, 256, 512, 1024"),
        ({"name": "resnet", "resolution": 2048}, "choose one of 64, 128, 256, 512, 1024"),
        ({"name": "dcgan", "resolution": 64, "critic_norm": "batch"}, "unknown critic norm 'batch'; choose one of layer, instance, none"),
    ],
)
def test_bad_names_and_resolutions_are_refused_with_the_valid_choices(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_models(name, latent_dim=8, **kwargs)
