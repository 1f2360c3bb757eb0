"""train/run/truncation.py and --truncation in generate.py / evaluate.py: the BigGAN truncation
trick by redrawing, the untruncated draw unchanged bit for bit, and what psi does to the samples of
the session's trained WGAN-GP run."""
import math

import numpy as np
import pytest
import torch

from tests.conftest import completed, tool_in_process
from train.generate import latent_draws
from train.report.fid import generated_blocks, to_uint8
from train.run.finished import FinishedRun
from train.run.networks import render_samples
from train.run.truncation import TruncatedGenerator, redraw_beyond, truncated_latents

PSIS = (0.25, 0.5, 1.0, 2.0, None)  # None: no truncation


def truncated_normal_std(psi: float) -> float:
    """The std of N(0, 1) conditioned on |z| <= psi: sqrt(1 - 2 psi phi(psi) / (2 Phi(psi) - 1))."""
    density = math.exp(-psi * psi / 2) / math.sqrt(2 * math.pi)
    return math.sqrt(1 - 2 * psi * density / math.erf(psi / math.sqrt(2)))


def mean_pairwise_distance(samples: torch.Tensor) -> float:
    flat = samples.flatten(1).double()
    return (torch.cdist(flat, flat).sum() / (len(flat) * (len(flat) - 1))).item()


def test_without_psi_the_latents_are_todays_draw_bit_for_bit():
    # generate.py drew torch.randn(n, latent_dim) from Generator().manual_seed(seed), draw after draw.
    rng = torch.Generator().manual_seed(3)
    expected = torch.stack([torch.randn(10, 64, generator=rng) for _ in range(2)])
    assert torch.equal(latent_draws(2, 10, 64, seed=3), expected)
    assert torch.equal(latent_draws(2, 10, 64, seed=3, truncation=None), expected)


def test_components_beyond_psi_are_redrawn_into_a_truncated_normal_and_the_others_kept():
    z = torch.randn(4000, 64, generator=torch.Generator().manual_seed(0))
    truncated = redraw_beyond(z, 0.5, torch.Generator().manual_seed(1))
    inside = z.abs() <= 0.5
    assert truncated.abs().max() <= 0.5
    assert torch.equal(truncated[inside], z[inside])  # kept as drawn: the trick only redraws
    assert (truncated[~inside] != z[~inside]).all()
    # Redrawing until inside gives N(0, 1) conditioned on |z| <= psi, not a clamp (which piles
    # mass at +-psi, std about 0.45) nor a rescale: its std is 0.2838 at psi 0.5.
    assert truncated.std().item() == pytest.approx(truncated_normal_std(0.5), rel=0.01)
    assert (truncated.abs() == 0.5).sum() == 0


def test_truncated_latents_drawn_in_chunks_equal_one_draw():
    # generate.py's .npy draws in chunks of a multiple of 16 rows, the grid at once: the same latents.
    whole = truncated_latents(40, 8, torch.Generator().manual_seed(5), 0.5)
    rng = torch.Generator().manual_seed(5)
    chunks = torch.cat([truncated_latents(count, 8, rng, 0.5) for count in (16, 16, 8)])
    assert torch.equal(whole, chunks) and whole.abs().max() <= 0.5


def test_generate_without_truncation_writes_todays_samples_and_with_psi_the_truncated_ones(wgangp_run, tmp_path):
    finished = FinishedRun(wgangp_run)
    generator, _ = finished.ema_generator()
    todays = render_samples(generator, torch.randn(20, finished.config.latent_dim, generator=torch.Generator().manual_seed(2)))
    completed(tool_in_process("train/generate.py", "--run", str(wgangp_run), "--n", "20", "--seed", "2", "--output", str(tmp_path / "plain.npy")))
    assert np.array_equal(np.load(tmp_path / "plain.npy"), to_uint8(todays).numpy())

    args = ["--run", str(wgangp_run), "--n", "20", "--seed", "2", "--truncation", "0.5", "--output", str(tmp_path / "psi.npy")]
    completed(tool_in_process("train/generate.py", *args))
    truncated = render_samples(generator, latent_draws(1, 20, finished.config.latent_dim, seed=2, truncation=0.5)[0])
    assert np.array_equal(np.load(tmp_path / "psi.npy"), to_uint8(truncated).numpy())
    assert not np.array_equal(np.load(tmp_path / "psi.npy"), np.load(tmp_path / "plain.npy"))


def test_psi_towards_zero_sends_every_sample_to_g_of_zero_and_diversity_falls_with_psi(wgangp_run):
    """As psi -> 0 every latent lies in [-psi, psi]^d, so by the generator's continuity every sample
    tends to G(0): one image, which is the mean of the truncated samples but not, in general, the
    mean of the untruncated ones. Diversity (mean pairwise L2 distance of 64 samples) rises with psi."""
    finished = FinishedRun(wgangp_run)
    generator, _ = finished.ema_generator()
    dim = finished.config.latent_dim
    origin = render_samples(generator, torch.zeros(1, dim))
    samples = {psi: render_samples(generator, latent_draws(1, 64, dim, seed=0, truncation=psi)[0]) for psi in (1e-3, *PSIS)}
    assert (samples[1e-3] - origin).abs().max() < 0.01
    assert (samples[None] - origin).abs().amax(dim=(1, 2, 3)).min() > 0.1  # untruncated, none of them is G(0)
    diversity = [mean_pairwise_distance(samples[psi]) for psi in (1e-3, *PSIS)]
    assert diversity == sorted(diversity) and len(set(diversity)) == len(diversity), diversity


def test_evaluators_truncated_samples_do_not_depend_on_how_blocks_are_shared():
    # The evaluators seed torch's global generator per block before the forward: the redraws too.
    generator = TruncatedGenerator(torch.nn.Unflatten(1, (3, 4, 4)), psi=0.5)
    whole = torch.cat(list(generated_blocks(generator, 48, range(32), 16, seed=7, device=torch.device("cpu"))))
    second = torch.cat(list(generated_blocks(generator, 48, range(16, 32), 16, seed=7, device=torch.device("cpu"))))
    assert torch.equal(whole[16:], second)
    plain = torch.cat(list(generated_blocks(generator.generator, 48, range(32), 16, seed=7, device=torch.device("cpu"))))
    assert plain.float().std() > whole.float().std()
    assert ((whole.float() / 127.5 - 1).abs() <= 0.5 + 1 / 127.5).all()  # latents within psi, up to uint8 rounding


@pytest.mark.parametrize("script", ["train/generate.py", "train/evaluate.py"])
@pytest.mark.parametrize("psi", ["0", "-1", "nan", "half"])
def test_a_psi_that_is_not_above_zero_is_refused_naming_the_flag(wgangp_run, tmp_path, script, psi):
    result = tool_in_process(script, "--run", str(wgangp_run), "--truncation", psi, "--output", str(tmp_path / "out.npy"))
    assert result.returncode == 2 and "--truncation" in result.stderr and not (tmp_path / "out.npy").exists()
