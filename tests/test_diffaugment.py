"""train/gan/diffaugment.py: DiffAugment's transformations, their randomness and their gradients."""
import pytest
import torch

from train.gan.diffaugment import DiffAugment, parse_policy


def images(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_probability_zero_or_an_empty_policy_is_the_identity():
    x = images()
    for augment in (DiffAugment(probability=0.0), DiffAugment(policy=())):
        draw = augment.draw(len(x), 16, x.device, torch.Generator().manual_seed(1))
        assert draw == {}
        assert augment(x, draw) is x


def test_every_transformation_is_differentiable():
    for name in ("color", "translation", "cutout"):
        augment = DiffAugment(policy=(name,))
        x = images().requires_grad_(True)
        out = augment(x, augment.draw(len(x), 16, x.device, torch.Generator().manual_seed(2)))
        (out * torch.randn_like(out)).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, name


def test_translation_shifts_whole_pixels_and_fills_with_zeros():
    augment = DiffAugment(policy=("translation",))
    x = images(2)
    draw = {"translation_apply": torch.tensor([True, True]), "shift": torch.tensor([[2, -1], [0, 0]])}
    out = augment(x, draw)
    torch.testing.assert_close(out[0, :, :-2, 1:], x[0, :, 2:, :-1])  # out[i, j] = x[i + 2, j - 1]
    assert torch.all(out[0, :, -2:] == 0) and torch.all(out[0, :, :, :1] == 0)
    torch.testing.assert_close(out[1], x[1])


def test_cutout_zeroes_one_square_of_half_the_side():
    augment = DiffAugment(policy=("cutout",))
    x = torch.ones(1, 3, 16, 16)
    out = augment(x, {"cutout_apply": torch.tensor([True]), "cutout_centre": torch.tensor([[8, 8]])})
    assert torch.all(out[0, :, 4:12, 4:12] == 0)
    assert out.eq(0).sum() == 3 * 8 * 8
    corner = augment(x, {"cutout_apply": torch.tensor([True]), "cutout_centre": torch.tensor([[0, 0]])})
    assert corner.eq(0).sum() == 3 * 4 * 4  # clipped at the border


def test_each_transformation_applies_to_each_sample_with_the_probability():
    augment = DiffAugment(policy=("color",), probability=0.5)
    draw = augment.draw(4000, 16, torch.device("cpu"), torch.Generator().manual_seed(3))
    assert 0.45 < draw["color_apply"].float().mean() < 0.55
    x = images(4)
    draw = {"color_apply": torch.tensor([True, False, True, False]), "brightness": torch.full((4,), 0.25),
            "saturation": torch.ones(4), "contrast": torch.ones(4)}
    out = augment(x, draw)
    torch.testing.assert_close(out[0], x[0] + 0.25)
    assert torch.equal(out[1], x[1]) and torch.equal(out[3], x[3])


def test_draws_come_from_the_given_generator():
    augment = DiffAugment()
    first = augment.draw(8, 32, torch.device("cpu"), torch.Generator().manual_seed(4))
    again = augment.draw(8, 32, torch.device("cpu"), torch.Generator().manual_seed(4))
    other = augment.draw(8, 32, torch.device("cpu"), torch.Generator().manual_seed(5))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert first["shift"].abs().max() <= 4  # 1/8 of 32 px


def test_policy_parsing_names_the_bad_transformation():
    assert parse_policy("color,translation,cutout") == ("color", "translation", "cutout")
    assert parse_policy("") == () and parse_policy("none") == ()
    with pytest.raises(ValueError, match="'colour'.*color, translation, cutout"):
        parse_policy("colour,cutout")
