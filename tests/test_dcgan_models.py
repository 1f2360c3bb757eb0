"""models/dcgan.py: the PyTorch tutorial's DCGAN, and each ablation switch doing what its name says."""
import pytest
import torch
from torch import nn

from models import IMAGE_RESOLUTIONS, DCGANOptions, build_models

TUTORIAL = {"latent_dim": 100, "channel_base": 2048, "channel_max": 512, "critic_norm": "batch",
            "dcgan": DCGANOptions(conv_bias=False, dcgan_init=True)}
SMALL = {"latent_dim": 8, "channel_base": 512, "channel_max": 32}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layers(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def tutorial_pair(nz: int = 100, ngf: int = 64, ndf: int = 64) -> tuple[nn.Sequential, nn.Sequential]:
    """The networks and weights_init of pytorch.org/tutorials/beginner/dcgan_faces_tutorial.html, verbatim."""

    def weights_init(m: nn.Module) -> None:
        classname = m.__class__.__name__
        if classname.find("Conv") != -1:
            nn.init.normal_(m.weight.data, 0.0, 0.02)
        elif classname.find("BatchNorm") != -1:
            nn.init.normal_(m.weight.data, 1.0, 0.02)
            nn.init.constant_(m.bias.data, 0)

    generator = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh(),
    )  # fmt: skip
    generator.apply(weights_init)
    discriminator = nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid(),
    )  # fmt: skip
    discriminator.apply(weights_init)
    return generator, discriminator


def test_tutorial_options_build_the_tutorial_networks_with_its_parameter_counts():
    generator, critic = build_models("dcgan", resolution=64, **TUTORIAL)
    assert count(generator) == 3_576_704
    assert count(critic) == 2_765_568
    assert all(m.bias is None for m in layers(generator, nn.ConvTranspose2d) + layers(critic, nn.Conv2d))


def test_tutorial_options_give_the_tutorials_weights_and_outputs_for_the_same_seed():
    torch.manual_seed(0)
    generator, critic = build_models("dcgan", resolution=64, **TUTORIAL)
    torch.manual_seed(0)
    tutorial_generator, tutorial_discriminator = tutorial_pair()
    for ours, theirs in [(generator, tutorial_generator), (critic, tutorial_discriminator)]:
        ours_state, theirs_state = list(ours.state_dict().values()), list(theirs.state_dict().values())
        assert len(ours_state) == len(theirs_state)
        assert all(torch.equal(a, b) for a, b in zip(ours_state, theirs_state))
    z = torch.randn(2, 100)
    with torch.no_grad():
        images = generator(z)
        torch.testing.assert_close(images, tutorial_generator(z[:, :, None, None]))
        # a logit: the objective applies the sigmoid inside a numerically stable loss
        torch.testing.assert_close(torch.sigmoid(critic(images)), tutorial_discriminator(images).flatten())
    assert critic(images).shape == (2,)


@pytest.mark.parametrize("resolution", IMAGE_RESOLUTIONS)
def test_each_doubling_above_64_adds_one_up_and_one_down_block(resolution):
    generator, critic = build_models("dcgan", resolution=resolution, **TUTORIAL)
    doublings = resolution.bit_length() - 3  # 4 px -> resolution
    assert sum(m.stride == (2, 2) for m in layers(generator, nn.ConvTranspose2d)) == doublings
    assert sum(m.stride == (2, 2) for m in layers(critic, nn.Conv2d)) == doublings
    assert layers(generator, nn.ConvTranspose2d)[0].out_channels == 512
    assert layers(critic, nn.Conv2d)[-1].in_channels == 512


def test_tutorial_networks_at_128_px_map_latents_to_images_and_images_to_logits():
    generator, critic = build_models("dcgan", resolution=128, **TUTORIAL)
    with torch.no_grad():
        images = generator(torch.randn(2, 100))
        assert images.shape == (2, 3, 128, 128)
        assert critic(images).shape == (2,)


def test_batch_critic_norm_follows_every_hidden_conv_but_the_first_unless_asked():
    _, critic = build_models("dcgan", resolution=64, critic_norm="batch", **SMALL)
    assert len(layers(critic, nn.BatchNorm2d)) == 3
    assert critic.net[1].__class__ is nn.LeakyReLU  # the first conv feeds its activation directly
    _, critic = build_models("dcgan", resolution=64, critic_norm="batch", dcgan=DCGANOptions(d_first_norm=True), **SMALL)
    assert len(layers(critic, nn.BatchNorm2d)) == 4
    assert isinstance(critic.net[1], nn.BatchNorm2d)


def test_biases_sit_only_where_no_batchnorm_follows_unless_conv_bias_is_off():
    generator, critic = build_models("dcgan", resolution=64, critic_norm="batch", dcgan=DCGANOptions(g_norm="none"), **SMALL)
    assert all(m.bias is not None for m in layers(generator, nn.ConvTranspose2d))
    assert [m.bias is not None for m in layers(critic, nn.Conv2d)] == [True, False, False, False, True]
    generator, critic = build_models("dcgan", resolution=64, dcgan=DCGANOptions(g_norm="none", conv_bias=False), **SMALL)
    assert all(m.bias is None for m in layers(generator, nn.ConvTranspose2d) + layers(critic, nn.Conv2d))


def test_generator_norm_can_be_dropped():
    generator, _ = build_models("dcgan", resolution=64, dcgan=DCGANOptions(g_norm="none"), **SMALL)
    assert layers(generator, nn.BatchNorm2d) == []
    assert generator(torch.randn(1, 8)).shape == (1, 3, 64, 64)  # no batch statistics: one sample trains


@pytest.mark.parametrize("network, option", [(0, "g_activation"), (1, "d_activation")])
@pytest.mark.parametrize("kind, expected", [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU)])
def test_activations_are_selectable_per_network(network, option, kind, expected):
    module = build_models("dcgan", resolution=64, dcgan=DCGANOptions(**{option: kind}), **SMALL)[network]
    activations = layers(module, (nn.ReLU, nn.LeakyReLU))
    assert len(activations) == 4 and all(type(m) is expected for m in activations)
    assert all(m.negative_slope == 0.2 for m in activations if isinstance(m, nn.LeakyReLU))


def test_k2s2_upsampling_tiles_without_overlap_and_keeps_the_output_size():
    generator, _ = build_models("dcgan", resolution=64, dcgan=DCGANOptions(upsample="k2s2"), **SMALL)
    upsamplers = [m for m in layers(generator, nn.ConvTranspose2d) if m.stride == (2, 2)]
    assert len(upsamplers) == 4 and all(m.kernel_size == (2, 2) and m.padding == (0, 0) for m in upsamplers)
    assert generator(torch.randn(2, 8)).shape == (2, 3, 64, 64)


def test_maxpool_downsampling_is_a_same_size_conv_then_2x2_pooling():
    _, critic = build_models("dcgan", resolution=64, dcgan=DCGANOptions(downsample="maxpool"), **SMALL)
    convs = layers(critic, nn.Conv2d)[:-1]
    assert all(m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1) for m in convs)
    assert len(layers(critic, nn.MaxPool2d)) == len(convs) == 4
    assert critic(torch.randn(2, 3, 64, 64)).shape == (2,)


@pytest.mark.parametrize("network, option", [(0, "g_dropout"), (1, "d_dropout")])
def test_dropout_follows_each_hidden_block_and_is_off_in_eval_mode(network, option):
    module = build_models("dcgan", resolution=64, dcgan=DCGANOptions(**{option: 0.5}), **SMALL)[network]
    dropouts = layers(module, nn.Dropout2d)
    assert len(dropouts) == 4 and all(m.p == 0.5 for m in dropouts)
    assert all(isinstance(before, (nn.ReLU, nn.LeakyReLU)) for before, m in zip(module.net, module.net[1:]) if m in dropouts)
    x = torch.randn(4, 8) if network == 0 else torch.randn(4, 3, 64, 64)
    module.eval()
    assert torch.equal(module(x), module(x))
    module.train()
    assert not torch.equal(module(x), module(x))


def test_dcgan_init_draws_weights_from_n_0_002_and_batchnorm_scales_from_n_1_002():
    generator, critic = build_models("dcgan", resolution=64, critic_norm="batch", dcgan=DCGANOptions(dcgan_init=True), **SMALL)
    convs = layers(generator, nn.ConvTranspose2d) + layers(critic, nn.Conv2d)
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.mean()) < 0.002 and abs(weights.std() - 0.02) < 0.002
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in convs if m.bias is not None)
    norms = layers(generator, nn.BatchNorm2d) + layers(critic, nn.BatchNorm2d)
    scales = torch.cat([m.weight for m in norms])
    assert abs(scales.mean() - 1) < 0.01 and abs(scales.std() - 0.02) < 0.01
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)
