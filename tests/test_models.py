"""models/: shapes, widths and the contracts the objectives rely on."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from models import IMAGE_RESOLUTIONS, MODEL_NAMES, DCGANOptions, ModelOptionError, build_models

SMALL = {"latent_dim": 8, "channel_base": 512, "channel_max": 16, "mlp_hidden": 32}


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
        ({"name": "dcgan", "resolution": 96}, "resolution 96 is not supported by 'dcgan'; choose one of 32, 64, 128, 256, 512, 1024"),
        ({"name": "resnet", "resolution": 2048}, "choose one of 32, 64, 128, 256, 512, 1024"),
        ({"name": "dcgan", "resolution": 64, "critic_norm": "group"}, "unknown critic norm 'group'; choose one of layer, instance, none, batch"),
    ],
)
def test_bad_names_and_resolutions_are_refused_with_the_valid_choices(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_models(name, latent_dim=8, **kwargs)


@pytest.mark.parametrize(
    "name, generator_params, critic_params",
    [
        ("dcgan", 7_873_283, 6_834_049),
        ("resnet", 8_541_443, 7_492_801),
        ("mlp", 592_386, 527_361),
        ("lightweight", 15_464_391, 9_435_495),
    ],
)
def test_default_networks_keep_their_parameter_counts(name, generator_params, critic_params):
    """Runs and checkpoints from before the DCGAN switches existed must load into the default networks."""
    generator, critic = build_models(name, resolution=64, latent_dim=128)
    assert (count(generator), count(critic)) == (generator_params, critic_params)


def test_batch_critic_norm_is_for_dcgan_only_because_it_couples_samples():
    _, critic = build_models("dcgan", resolution=64, critic_norm="batch", **SMALL)
    assert any(isinstance(m, nn.BatchNorm2d) for m in critic.modules())
    for name in ("resnet", "lightweight"):
        with pytest.raises(ModelOptionError, match="critic norm 'batch' is a 'dcgan' model option") as error:
            build_models(name, resolution=64, critic_norm="batch", **SMALL)
        assert error.value.option == "critic_norm"
        assert "choose one of layer, instance, none" in str(error.value)


DCGAN_SWITCHES = {
    "g_norm": "none",
    "d_first_norm": True,
    "g_activation": "leaky_relu",
    "d_activation": "relu",
    "upsample": "k2s2",
    "downsample": "maxpool",
    "g_dropout": 0.1,
    "d_dropout": 0.1,
    "conv_bias": False,
    "dcgan_init": True,
}


def one_option(option: str, value) -> dict:
    """A builder argument: the DCGAN switches travel inside one DCGANOptions."""
    return {"dcgan": DCGANOptions(**{option: value})} if option in DCGAN_SWITCHES else {option: value}


@pytest.mark.parametrize("option, value", DCGAN_SWITCHES.items())
@pytest.mark.parametrize("name", ["resnet", "mlp", "lightweight"])
def test_dcgan_switches_are_refused_for_other_models(name, option, value):
    with pytest.raises(ModelOptionError, match=f"{option}={value!r} is a 'dcgan' model option, not {name!r}'s") as error:
        build_models(name, resolution=64, **one_option(option, value), **SMALL)
    assert error.value.option == option
    assert "leave it at its default" in str(error.value)


def test_all_dcgan_switches_together_still_map_latents_to_images_and_images_to_scores():
    generator, critic = build_models("dcgan", resolution=64, critic_norm="batch", dcgan=DCGANOptions(**DCGAN_SWITCHES), **SMALL)
    images = generator(torch.randn(2, 8))
    assert images.shape == (2, 3, 64, 64)
    assert critic(images).shape == (2,)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("g_norm", "layer", "unknown g_norm 'layer'; choose one of batch, none"),
        ("g_activation", "gelu", "unknown g_activation 'gelu'; choose one of relu, leaky_relu"),
        ("d_activation", "tanh", "unknown d_activation 'tanh'; choose one of relu, leaky_relu"),
        ("upsample", "bilinear", "unknown upsample 'bilinear'; choose one of k4s2, k2s2"),
        ("downsample", "avgpool", "unknown downsample 'avgpool'; choose one of strided, maxpool"),
        ("g_dropout", 1.0, r"g_dropout 1.0 is not a dropout probability; choose a value in \[0, 1\)"),
        ("d_dropout", -0.1, r"d_dropout -0.1 is not a dropout probability; choose a value in \[0, 1\)"),
        ("pack", 0, "pack 0 is not a number of samples; choose a whole number >= 1"),
        ("pack", 2.0, "pack 2.0 is not a number of samples"),
    ],
)
def test_bad_option_values_are_refused_with_the_valid_ones(option, value, message):
    with pytest.raises(ModelOptionError, match=message) as error:
        build_models("dcgan", resolution=64, **one_option(option, value), **SMALL)
    assert error.value.option == option


def test_a_misspelt_model_option_is_refused_not_dropped():
    with pytest.raises(TypeError, match="g_nrom"):
        build_models("dcgan", resolution=64, g_nrom="none", **SMALL)
    with pytest.raises(TypeError, match="g_nrom"):
        DCGANOptions(g_nrom="none")


def test_packing_is_refused_for_lightweight_whose_discriminator_reconstructs_single_images():
    with pytest.raises(ModelOptionError, match="packing is not possible for 'lightweight'.*use pack 1") as error:
        build_models("lightweight", resolution=64, pack=2, **SMALL)
    assert error.value.option == "pack"


def largest_singular_value(layer: nn.Module) -> float:
    # the matrix spectral norm bounds: outputs by everything else (a transposed conv's outputs are dim 1)
    weight = layer.weight.movedim(1, 0) if isinstance(layer, nn.ConvTranspose2d) else layer.weight
    return torch.linalg.matrix_norm(weight.flatten(1), ord=2).item()


def weighted_layers(network: nn.Module) -> list[nn.Module]:
    return [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]


def batch_for(name: str, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(size, 8), torch.randn(size, 2) if name == "mlp" else torch.randn(size, 3, 64, 64)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_spectral_norm_holds_every_weighted_layer_at_unit_largest_singular_value(name):
    torch.manual_seed(0)
    generator, critic = build_models(name, resolution=64, g_spectral_norm=True, d_spectral_norm=True, **SMALL)
    z, data = batch_for(name)
    quarters = {"quarters": torch.zeros(len(data), dtype=torch.long)} if name == "lightweight" else {}  # reach the decoders
    for _ in range(5):  # one power iteration per train-mode forward
        generator(z), critic(data, **quarters)
    for network in (generator, critic):
        network.eval()
        assert all(parametrize.is_parametrized(layer, "weight") for layer in weighted_layers(network))
        with torch.no_grad():
            sigmas = torch.tensor([largest_singular_value(layer) for layer in weighted_layers(network)])
        # the power-iteration estimate never exceeds the true value, so the normalised weights err above 1
        # (unnormalised, these layers range from about 0.4 to 3.7)
        assert sigmas.min() > 1 - 1e-4 and sigmas.max() < 1.1, sigmas


def test_spectral_norm_is_per_network():
    generator, critic = build_models("dcgan", resolution=64, d_spectral_norm=True, **SMALL)
    assert not any(parametrize.is_parametrized(layer) for layer in weighted_layers(generator))
    assert all(parametrize.is_parametrized(layer) for layer in weighted_layers(critic))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_spectrally_normed_networks_round_trip_through_their_state_dict(name):
    torch.manual_seed(0)
    trained = build_models(name, resolution=64, g_spectral_norm=True, d_spectral_norm=True, **SMALL)
    z, images = batch_for(name)
    for _ in range(3):
        trained[0](z), trained[1](images)
    torch.manual_seed(1)
    fresh = build_models(name, resolution=64, g_spectral_norm=True, d_spectral_norm=True, **SMALL)
    with torch.no_grad():
        for before, after, x in zip(trained, fresh, (z, images)):
            after.load_state_dict(before.state_dict())  # power-iteration vectors included
            torch.testing.assert_close(after.eval()(x), before.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["dcgan", "resnet", "mlp"])
@pytest.mark.parametrize("pack", [2, 3])
def test_packed_critics_score_packs_of_consecutive_samples(name, pack):
    _, critic = build_models(name, resolution=64, pack=pack, **SMALL)
    first = weighted_layers(critic)[0]
    assert (first.in_features if name == "mlp" else first.in_channels) == (2 if name == "mlp" else 3) * pack
    _, samples = batch_for(name, size=2 * pack)
    with torch.no_grad():
        scores = critic(samples)
        assert scores.shape == (2,)
        torch.testing.assert_close(scores, torch.cat([critic(samples[:pack]), critic(samples[pack:])]))


@pytest.mark.parametrize("name", ["dcgan", "resnet", "mlp"])
def test_packs_never_mix_real_and_fake_but_do_depend_on_which_samples_share_a_pack(name):
    _, critic = build_models(name, resolution=64, pack=2, **SMALL)
    _, real = batch_for(name)
    _, fake = batch_for(name)
    with torch.no_grad():
        scores = critic(torch.cat([real, fake]))
        torch.testing.assert_close(scores, torch.cat([critic(real), critic(fake)]))
        regrouped = critic(real[[0, 2, 1, 3]])  # same samples, packed differently
    assert not torch.allclose(regrouped, scores[:2])


def test_a_batch_that_does_not_split_into_packs_is_refused():
    _, critic = build_models("dcgan", resolution=64, pack=2, **SMALL)
    with pytest.raises(ValueError, match="a batch of 3 cannot be split into packs of 2"):
        critic(torch.randn(3, 3, 64, 64))
