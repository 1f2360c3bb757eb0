"""train/dcgan.py: the tutorial DCGAN on the shared loop, with the stabilisers of the usual experiments."""
import pytest
import torch

from tests.conftest import assert_resumed_like_whole, completed
from train.dcgan import DCGANConfig, make_objective
from train.report.metrics import read_metrics
from train.run.config import ConfigError, load_config
from train.run.networks import build_networks
from train.run.runner import main
from train.wgangp import WGANGPConfig


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_recipe_defaults_build_the_pytorch_tutorial_networks():
    generator, discriminator = build_networks(DCGANConfig())
    assert (count(generator), count(discriminator)) == (3_576_704, 2_765_568)
    assert isinstance(discriminator.net[3], torch.nn.BatchNorm2d)  # the discriminator's second block is normalised
    config = DCGANConfig()
    assert (config.batch_size, config.lr, config.betas, config.latent_dim) == (128, 2e-4, (0.5, 0.999), 100)


def test_the_debug_run_trains_with_each_network_on_its_own_optimizer_settings(run, tmp_path):
    out = tmp_path / "dcgan"
    completed(run("train/dcgan.py", "--debug", "--max-steps", "6", "--log-every", "3", "--g-lr", "1e-4", "--d-lr", "4e-4",
                  "--d-betas", "0.0", "0.99", "--real-label", "0.9", "--out", str(out)))
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [3, 6] and all(0 < r["d_real"] < 1 for r in records)
    assert (out / "samples" / "step_000006.png").exists() and (out / "progress.gif").exists()
    checkpoint = out / "checkpoints" / "step_000006"
    groups = [torch.load(checkpoint / name, weights_only=True)["param_groups"][0] for name in ("optimizer.bin", "optimizer_1.bin")]
    assert (groups[0]["lr"], tuple(groups[0]["betas"])) == (1e-4, (0.5, 0.999))  # generator: --g-lr, shared betas
    assert (groups[1]["lr"], tuple(groups[1]["betas"])) == (4e-4, (0.0, 0.99))  # discriminator: its own


@pytest.mark.parametrize(
    "networks, latent_dim, first_norm, batch_size, g_optimizer, d_optimizer",
    [
        # stacked_MNIST_experiments/unrolled_GAN_experiment/D=0.25G/config.py and D=0.5G/config.py in fjxmlzn/PacGAN
        ("metz-quarter", 256, True, 128, (1e-4, (0.5, 0.99)), (2e-4, (0.5, 0.99))),
        ("metz-half", 256, True, 128, (1e-4, (0.5, 0.99)), (2e-4, (0.5, 0.99))),
        # stacked_MNIST_experiments/VEEGAN_experiment/config.py (Adam's beta2: TensorFlow's default)
        ("veegan", 100, False, 64, (2e-4, (0.5, 0.999)), (2e-4, (0.5, 0.999))),
    ],
)
def test_a_networks_preset_brings_what_the_reference_trained_with_and_given_flags_win(
    tmp_path, networks, latent_dim, first_norm, batch_size, g_optimizer, d_optimizer
):
    config = load_config(DCGANConfig, ["--data", "stacked-mnist", "--networks", networks, "--out", str(tmp_path / "r")], "test")
    assert (config.resolution, config.latent_dim, config.batch_size) == (32, latent_dim, batch_size)
    assert config.optimizer_settings() == (g_optimizer, d_optimizer)
    assert (config.critic_norm, config.g_norm, config.d_first_norm, config.conv_bias) == ("batch", "batch", first_norm, True)
    assert config.model_options().dcgan.networks == networks
    given = load_config(DCGANConfig, ["--data", "stacked-mnist", "--networks", networks, "--batch-size", "32",
                                      "--g-lr", "3e-4", "--critic-norm", "none", "--out", str(tmp_path / "r")], "test")
    assert (given.batch_size, given.optimizer_settings()[0][0], given.critic_norm) == (32, 3e-4, "none")
    assert given.latent_dim == latent_dim  # the rest of the preset stays


def test_the_project_networks_keep_the_recipe_defaults(tmp_path):
    assert load_config(DCGANConfig, ["--out", str(tmp_path / "r")], "test") == DCGANConfig(out=str(tmp_path / "r"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "synthetic", "--networks", "metz-half", "--resolution", "64"],
         "error: --networks: the 'metz-half' networks (stacked_MNIST_experiments/unrolled_GAN_experiment/D=0.5G/model.py"
         " in fjxmlzn/PacGAN) make 32 px images, not 64; set resolution 32 (Stacked MNIST's), or use networks 'project' at 64 px"),
        (["--data", "stacked-mnist", "--networks", "veegan", "--upsample", "k2s2"],
         "error: --upsample: upsample='k2s2' reshapes layers that the 'veegan' networks take from the reference code;"
         " leave it at its default 'k4s2', or use networks 'project'"),
        (["--data", "toy:8gaussians", "--networks", "metz-quarter"],
         "error: --networks: networks='metz-quarter' is a 'dcgan' model option, not 'mlp''s; leave it at its default 'project'"),
    ],
)
def test_a_networks_preset_that_does_not_fit_is_one_error_line_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "r"
    assert main(DCGANConfig, make_objective, "test", [*argv, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
    assert not out.exists()


STABILISED = ["--data", "toy:8gaussians", "--cpu", "--mixed-precision", "fp16", "--pack", "2", "--instance-noise", "0.5",
              "--instance-noise-steps", "10", "--real-label-range", "0.8", "1.1", "--label-jitter", "0.05",
              "--smooth-generator-target", "--unrolled-steps", "3", "--d-spectral-norm"]


@pytest.mark.slow
def test_every_stabiliser_at_once_under_fp16_resumes_exactly(run, tmp_path):
    """Packing, annealed instance noise, smoothed and jittered labels, a 3-step unrolled
    discriminator and spectral norm, under the fp16 GradScaler (CPU fp16): stopped at step 3 and
    resumed, the run logs, draws and averages what the uninterrupted one did, its scale included."""
    common = [*STABILISED, "--debug", "--ckpt-every", "3", "--log-every", "2", "--sample-every", "100"]
    completed(run("train/dcgan.py", *common, "--max-steps", "6", "--out", str(tmp_path / "whole")))
    completed(run("train/dcgan.py", *common, "--max-steps", "3", "--out", str(tmp_path / "split")))
    completed(run("train/dcgan.py", "--resume", "--max-steps", "6", "--out", str(tmp_path / "split")))
    records = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    assert records[0]["instance_noise_std"] > records[-1]["instance_noise_std"] > 0  # annealed by the step
    # the GradScaler's state is in every checkpoint, and the resumed run's scale went on from it
    scales = [torch.load(run / "checkpoints" / "step_000006" / "scaler.pt", weights_only=True)
              for run in (tmp_path / "whole", tmp_path / "split")]
    assert scales[0] == scales[1]
    assert_resumed_like_whole(tmp_path / "whole", tmp_path / "split", ("d_loss", "g_loss", "d_real", "d_fake", "instance_noise_std"))


@pytest.mark.parametrize(
    "config_cls, argv, message",
    [
        (WGANGPConfig, ["--pack", "2"], "--pack 2: the gradient penalty takes each sample's own input gradient"),
        (DCGANConfig, ["--pack", "3"], "--pack 3: --batch-size 8 must be a multiple of it"),
        (DCGANConfig, ["--real-label-range", "1.1", "0.8"], "--real-label-range 1.1 0.8: LOW must be below HIGH"),
        (DCGANConfig, ["--unrolled-steps", "2", "--grad-accum", "2"], "use --grad-accum 1"),
        (DCGANConfig, ["--d-lr", "0"], "--d-lr 0.0: must be above 0"),
        (DCGANConfig, ["--g-betas", "0.5", "1.0"], "--g-betas 0.5 1.0: each must be in [0, 1)"),
        (DCGANConfig, ["--upsample", "k3s1"], "invalid choice: 'k3s1'"),
        (DCGANConfig, ["--g-dropout", "1.5"], "--g-dropout: g_dropout 1.5 is not a dropout probability"),
    ],
)
def test_a_stabiliser_that_does_not_fit_is_refused_with_the_flag_and_the_fix(tmp_path, capsys, config_cls, argv, message):
    with pytest.raises((ConfigError, SystemExit)) as raised:
        load_config(config_cls, ["--debug", *argv, "--out", str(tmp_path / "r")], "test")
    text = str(raised.value) if isinstance(raised.value, ConfigError) else capsys.readouterr().err
    assert message in text
    assert not (tmp_path / "r").exists()


def test_the_lightweight_gan_refuses_instance_noise(tmp_path):
    from train.lightweight_gan import LightweightGANConfig

    with pytest.raises(ConfigError, match="--instance-noise 0.5: the discriminator's decoders would learn to reconstruct"):
        load_config(LightweightGANConfig, ["--debug", "--instance-noise", "0.5", "--out", str(tmp_path / "r")], "test")
