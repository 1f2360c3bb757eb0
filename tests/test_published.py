"""models/published.py: the published Stacked MNIST networks, layer for layer as PacGAN's code has them
(github.com/fjxmlzn/PacGAN, stacked_MNIST_experiments/), at 32 px."""
import pytest
import torch
from torch import nn

from models import DCGANOptions, ModelOptionError, build_models
from models.published import PUBLISHED

# What the reference code's TensorFlow variables hold (its model.py prints these counts), layer by layer:
# weights + biases of each linear / conv, BatchNorm's scale + shift.
METZ_GENERATOR = (256 * 64 * 16 + 64 * 16) + 2 * 64 + (9 * 64 * 32 + 32) + 2 * 32 + (9 * 32 * 16 + 16) + 2 * 16 \
    + (9 * 16 * 8 + 8) + 2 * 8 + (9 * 8 * 3 + 3)


def metz_discriminator(widths: tuple[int, int, int]) -> int:
    convs = sum(9 * c_in * c_out + c_out + 2 * c_out for c_in, c_out in zip((3, *widths), widths))  # BatchNorm on all three
    return convs + widths[-1] * 4 * 4 + 1  # the linear layer on the 4x4 map


VEEGAN_GENERATOR = (100 * 512 * 4 + 512 * 4) + 2 * 512 + (25 * 512 * 256 + 256) + 2 * 256 + (25 * 256 * 128 + 128) \
    + 2 * 128 + (25 * 128 * 64 + 64) + 2 * 64 + (25 * 64 * 3 + 3)
VEEGAN_DISCRIMINATOR = (25 * 3 * 64 + 64) + (25 * 64 * 128 + 128) + 2 * 128 + (25 * 128 * 256 + 256) + 2 * 256 \
    + (25 * 256 * 512 + 512) + 2 * 512 + 512 * 2 * 2 + 1
REFERENCE_COUNTS = {
    "metz-quarter": (METZ_GENERATOR, metz_discriminator((2, 4, 8))),
    "metz-half": (METZ_GENERATOR, metz_discriminator((4, 8, 16))),
    "veegan": (VEEGAN_GENERATOR, VEEGAN_DISCRIMINATOR),
}
LATENT = {"metz-quarter": 256, "metz-half": 256, "veegan": 100}


def reference_pair(networks: str, pack: int = 1) -> tuple[nn.Module, nn.Module]:
    """The pair with the reference's settings, as train/dcgan.py's --networks preset sets them."""
    options = DCGANOptions(networks=networks, d_first_norm=networks != "veegan", conv_bias=True, dcgan_init=True)
    return build_models("dcgan", resolution=32, latent_dim=LATENT[networks], critic_norm="batch", dcgan=options, pack=pack)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layers(module: nn.Module, kind: type | tuple[type, ...]) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("networks", PUBLISHED)
def test_each_pair_has_the_reference_codes_parameter_counts(networks):
    generator, discriminator = reference_pair(networks)
    assert (count(generator), count(discriminator)) == REFERENCE_COUNTS[networks]


@pytest.mark.parametrize("networks, ratio", [("metz-quarter", 4), ("metz-half", 2)])
def test_metz_discriminators_are_a_quarter_and_a_half_of_the_generators_widths(networks, ratio):
    """Metz et al.'s "D = 1/4 G" and "1/2 G" are widths: each discriminator conv has that fraction of the
    channels of the generator layer at its size (8, 16, 32 from 32 px down). Not parameters: the
    generator's 256 -> 4x4x64 projection alone holds 263,168 of its 287,875."""
    generator, discriminator = reference_pair(networks)
    generator_widths = [m.out_channels for m in layers(generator, nn.ConvTranspose2d)][::-1]  # 8, 16, 32
    assert [m.out_channels * ratio for m in layers(discriminator, nn.Conv2d)] == generator_widths == [8, 16, 32]
    quarter, half = (count(reference_pair(n)[1]) for n in ("metz-quarter", "metz-half"))
    assert 2 < half / quarter < 4  # twice the widths: between twice and four times the weights


@pytest.mark.parametrize("networks", PUBLISHED)
@pytest.mark.parametrize("pack", [1, 2])
def test_a_32_px_forward_maps_latents_to_images_in_tanh_range_and_each_pack_to_one_logit(networks, pack):
    generator, discriminator = reference_pair(networks, pack)
    with torch.no_grad():
        images = generator(torch.randn(4, LATENT[networks]))
        assert images.shape == (4, 3, 32, 32) and images.abs().max() <= 1
        assert discriminator(images).shape == (4 // pack,)
        assert generator.eval()(torch.randn(1, LATENT[networks])).shape == (1, 3, 32, 32)  # running statistics: one sample


def test_the_metz_layers_are_3x3_with_batchnorm_on_every_discriminator_conv_and_leaky_slope_0_3():
    generator, discriminator = reference_pair("metz-quarter")
    assert isinstance(generator.net[0], nn.Linear) and generator.net[0].out_features == 4 * 4 * 64
    convs = layers(generator, (nn.ConvTranspose2d, nn.Conv2d)) + layers(discriminator, nn.Conv2d)
    assert all(m.kernel_size == (3, 3) for m in convs)
    assert layers(generator, nn.Conv2d)[-1].stride == (1, 1)  # to RGB at full size, after the last doubling
    assert len(layers(discriminator, nn.BatchNorm2d)) == 3 and isinstance(discriminator.net[1], nn.BatchNorm2d)
    assert {m.negative_slope for m in layers(discriminator, nn.LeakyReLU)} == {0.3}


def test_the_veegan_layers_are_5x5_from_a_2x2_map_with_the_first_discriminator_conv_unnormalised():
    generator, discriminator = reference_pair("veegan")
    assert generator.net[0].out_features == 2 * 2 * 512
    assert all(m.kernel_size == (5, 5) and m.stride == (2, 2) for m in layers(generator, nn.ConvTranspose2d) + layers(discriminator, nn.Conv2d))
    assert isinstance(discriminator.net[1], nn.LeakyReLU) and len(layers(discriminator, nn.BatchNorm2d)) == 3
    assert {m.negative_slope for m in layers(discriminator, nn.LeakyReLU)} == {0.2}


def test_the_reference_init_draws_weights_at_std_0_02_and_sets_batchnorm_to_identity():
    torch.manual_seed(0)
    generator, discriminator = reference_pair("veegan")
    weights = torch.cat([m.weight.flatten() for m in layers(generator, (nn.Linear, nn.ConvTranspose2d))])
    assert abs(weights.std() - 0.02) < 0.001
    convs = torch.cat([m.weight.flatten() for m in layers(discriminator, nn.Conv2d)])
    assert convs.abs().max() <= 0.04  # TF's truncated normal: within 2 std
    norms = layers(generator, nn.BatchNorm2d) + layers(discriminator, nn.BatchNorm2d)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in norms)


@pytest.mark.parametrize("networks", PUBLISHED)
def test_another_resolution_is_refused_naming_the_size_the_networks_make(networks):
    with pytest.raises(ModelOptionError, match=f"the '{networks}' networks .* make 32 px images, not 64; set resolution 32") as error:
        build_models("dcgan", resolution=64, latent_dim=8, dcgan=DCGANOptions(networks=networks))
    assert error.value.option == "networks"


@pytest.mark.parametrize("option, value", [("upsample", "k2s2"), ("d_activation", "relu"), ("g_dropout", 0.1)])
def test_a_switch_that_reshapes_the_reference_layers_is_refused(option, value):
    with pytest.raises(ModelOptionError, match=f"{option}={value!r} reshapes layers that the 'metz-half' networks take") as error:
        build_models("dcgan", resolution=32, latent_dim=8, dcgan=DCGANOptions(networks="metz-half", **{option: value}))
    assert error.value.option == option


def test_the_networks_switch_is_a_dcgan_option_alone():
    with pytest.raises(ModelOptionError, match="networks='veegan' is a 'dcgan' model option, not 'resnet''s") as error:
        build_models("resnet", resolution=32, latent_dim=8, dcgan=DCGANOptions(networks="veegan"))
    assert error.value.option == "networks"
