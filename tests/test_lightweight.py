"""models/lightweight.py: the FastGAN generator and discriminator at every resolution."""
import pytest
import torch
from torch import nn

from models import IMAGE_RESOLUTIONS, build_models
from models.lightweight import (
    LOGIT_SIZE,
    SkipLayerExcitation,
    crop_quarter,
    discriminator_sle_pairs,
    generator_sle_pairs,
)

# Parameter counts at the default widths (channel_base 4096, channel_max 512, latent 256): the
# width rule keeps them flat from 64 to 1024 px; a change to the architecture shows up here.
PARAMETERS = {
    32: (17_952_135, 9_154_503),
    64: (17_561_543, 9_429_223),
    128: (17_879_401, 9_233_783),
    256: (17_954_041, 9_509_511),
    512: (17_468_027, 9_575_895),
    1024: (17_472_699, 9_582_599),
}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def small_pair(resolution: int = 64, **options):
    torch.manual_seed(0)
    return build_models("lightweight", resolution=resolution, latent_dim=16, channel_base=512, channel_max=32, **options)


@pytest.mark.parametrize("resolution", IMAGE_RESOLUTIONS)
def test_shapes_and_parameter_counts_at_every_resolution(resolution):
    generator, discriminator = build_models("lightweight", resolution=resolution, latent_dim=256, critic_norm="none")
    with torch.no_grad():
        images = generator.eval()(torch.randn(1, 256))
        logits = discriminator(images)
        _, (whole, part) = discriminator(torch.cat([images, images]), quarters=torch.tensor([3]))
    assert images.shape == (1, 3, resolution, resolution) and images.abs().max() <= 1
    assert logits.shape == (1, LOGIT_SIZE * LOGIT_SIZE)
    # the decoders reconstruct only the images given quarters, at 128 px (or less, below 256 px)
    assert whole.shape == (1, 3, min(128, resolution), min(128, resolution))
    assert part.shape == (1, 3, min(128, resolution // 2), min(128, resolution // 2))
    expected_g, expected_d = PARAMETERS[resolution]
    assert (count(generator), count(discriminator)) == (expected_g, expected_d)


def test_excitation_pairs_are_the_papers_at_1024_and_scaled_below_down_to_32_px():
    assert generator_sle_pairs(1024) == [(8, 128), (16, 256), (32, 512)]
    assert generator_sle_pairs(256) == [(4, 64), (8, 128), (16, 256)]
    assert generator_sle_pairs(64) == [(4, 64)]
    assert discriminator_sle_pairs(1024) == [(256, 32), (128, 16), (64, 8)]
    assert discriminator_sle_pairs(64) == [(32, 8)]
    assert generator_sle_pairs(32) == [(4, 32)] and discriminator_sle_pairs(32) == [(16, 8)]  # no 16x or 4x jump fits
    for resolution in IMAGE_RESOLUTIONS:
        generator, discriminator = build_models("lightweight", resolution=resolution, latent_dim=8, channel_base=256, channel_max=16)
        assert len(generator.excitations) >= 1 and len(discriminator.excitations) >= 1


def test_excitation_gates_channels_of_the_target_by_the_source():
    excitation = SkipLayerExcitation(source_channels=4, target_channels=6)
    target, source = torch.ones(2, 6, 32, 32), torch.randn(2, 4, 8, 8)
    gated = excitation(target, source)
    assert gated.shape == target.shape
    # one gate in (0, 1) per sample and channel, constant over the feature map
    assert torch.all((gated > 0) & (gated < 1))
    assert torch.all(gated == gated[:, :, :1, :1])


def test_excitations_attention_and_decoders_receive_gradients():
    generator, discriminator = small_pair(64, critic_norm="none", attn_resolutions=(8, 16))
    images = generator(torch.randn(4, 16))
    logits, (whole, part) = discriminator(images, quarters=torch.tensor([0, 3]))
    (logits.mean() + whole.mean() + part.mean()).backward()
    for name, module in [*generator.named_modules(), *discriminator.named_modules()]:
        if name.startswith(("excitations", "attention", "reconstruct")) and list(module.parameters(recurse=False)):
            for p in module.parameters(recurse=False):
                assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert len(generator.attention) == len(discriminator.attention) == 2


def test_discriminator_scores_each_sample_independently():
    _, discriminator = small_pair(64, critic_norm="layer")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())
    batch = torch.randn(4, 3, 64, 64)
    together = discriminator(batch)
    alone = torch.cat([discriminator(image[None]) for image in batch])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_generator_injects_noise_in_training_only():
    generator, _ = small_pair(64)
    for module in generator.modules():
        if hasattr(module, "weight") and module.__class__.__name__ == "NoiseInjection":
            nn.init.constant_(module.weight, 0.5)
    z = torch.randn(2, 16)
    with torch.no_grad():
        generator.eval()
        assert torch.equal(generator(z), generator(z))  # samples depend on the latent alone
        generator.train()
        assert not torch.equal(generator(z), generator(z))


def test_crop_quarter_takes_each_samples_own_quarter_row_major():
    image = torch.arange(16.0).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    quarters = crop_quarter(image, torch.tensor([1, 2]))
    assert quarters[0].flatten().tolist() == [2, 3, 6, 7]  # top right
    assert quarters[1].flatten().tolist() == [8, 9, 12, 13]  # bottom left


@pytest.mark.parametrize(
    "options, message",
    [
        ({"attn_resolutions": (64,)}, "attention at 64 px"),
        ({"attn_resolutions": (12,)}, "attention at 12 px"),
    ],
)
def test_impossible_attention_sizes_are_refused_with_the_valid_ones(options, message):
    with pytest.raises(ValueError, match=message) as error:
        build_models("lightweight", resolution=64, latent_dim=8, **options)
    assert "choose from 8, 16" in str(error.value)


def test_attention_is_refused_for_models_without_it():
    with pytest.raises(ValueError, match="'lightweight' model option"):
        build_models("resnet", resolution=64, latent_dim=8, attn_resolutions=(16,))
