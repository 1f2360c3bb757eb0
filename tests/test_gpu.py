"""CUDA paths: fp16 and bf16 training steps, JPEG batches decoded on the GPU (--decode-device cuda);
skipped on machines without a GPU."""
import numpy as np
import pytest
import torch

from train.report.metrics import read_metrics
from train.run.precision import resolve_mixed_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_debug_run_trains_with_finite_losses_under_mixed_precision(run, tmp_path, precision):
    out = tmp_path / precision
    result = run("train/wgangp.py", "--debug", "--max-steps", "20", "--mixed-precision", precision, "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    records = read_metrics(out / "metrics.jsonl")
    assert all(np.isfinite(r[k]) for r in records for k in ("d_loss", "g_loss", "gp", "wdist"))
    if precision == "fp16":
        assert records[-1]["skipped_steps"] < 20  # the scaler settles instead of skipping every step


@pytest.mark.parametrize("resolution", [64, 256, 1024])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_lightweight_gan_trains_with_finite_losses_under_mixed_precision(run, tmp_path, precision, resolution):
    out = tmp_path / f"{precision}-{resolution}"
    result = run(
        "train/lightweight_gan.py", "--debug", "--max-steps", "10", "--resolution", str(resolution),
        "--batch-size", "4", "--gp-weight", "1", "--gp-every", "2", "--mixed-precision", precision, "--out", str(out),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = read_metrics(out / "metrics.jsonl")
    assert all(np.isfinite(r[k]) for r in records for k in ("d_loss", "g_loss", "hinge", "recon", "gp"))


def test_bf16_is_kept_only_where_the_gpu_has_it_natively():
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    if native:
        assert resolve_mixed_precision("bf16", use_cpu=False) == "bf16"
    else:
        with pytest.warns(UserWarning, match="no native bf16"):
            assert resolve_mixed_precision("bf16", use_cpu=False) == "fp16"


def test_fp16_penalty_matches_fp32_on_the_gpu():
    from train.gan.penalty import gradient_penalty

    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).cuda()
    inputs = torch.randn(64, 2, device="cuda")
    exact, _ = gradient_penalty(critic, inputs)
    with torch.autocast("cuda", dtype=torch.float16):
        scaled, _ = gradient_penalty(critic, inputs, scaler=torch.amp.GradScaler("cuda"))
    torch.testing.assert_close(scaled, exact, rtol=2e-2, atol=1e-4)


def test_the_penalty_on_a_gpu_takes_the_rewritten_convolutions_with_pytorchs_gradients():
    """train.gan.conv_grad on CUDA, where the penalty turns it on by itself: the same gradients as
    PyTorch's double backward with TF32 off (an H200 with the trainer's TF32 on: 8.5e-4 apart on the
    256-px WGAN-GP critic), and none of the feature-map-sized kernels it exists to avoid."""
    from torch.profiler import ProfilerActivity, profile

    from tests.test_conv_grad import penalty_and_gradients, worst_relative

    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        rewritten = penalty_and_gradients(True, device="cuda")
        expected = penalty_and_gradients(False, device="cuda")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert worst_relative(rewritten[2], expected[2]) <= 1e-5
    critic_model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 1, 1), torch.nn.Flatten(), torch.nn.Linear(8 * 16 * 16, 1)).cuda()
    from train.gan.penalty import gradient_penalty

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        penalty, _ = gradient_penalty(critic_model, torch.randn(4, 3, 16, 16, device="cuda"))
        penalty.backward()
    weights = [e.input_shapes[1] for e in prof.events() if e.name == "aten::convolution" and len(e.input_shapes) > 1]
    assert weights and all(w[2:] == [3, 3] for w in weights), weights


# nvJPEG decodes a colour JPEG a little differently from libjpeg-turbo (Pillow, under decode_image).
# Measured on an H200 (torch 2.11, 2026-12-04), the raw decodes of tests/test_device_decode.py's small
# noisy sources part by up to 32 levels (5.8 on average) and its greyscale one by none: the chroma's
# upsampling, not the IDCT. Shrinking averages that out: these sources to 32 px, 7 levels at most and
# 0.74 on average, within the CPU path's bound; 1024-px faces to 512 px, 5 and 0.65 (bench/decode_device.py).
# A source smaller than the training resolution keeps it: 40x50 to 64 px, 28 levels and 4.3 on average.
UPSAMPLED_MAX_LEVELS, UPSAMPLED_MEAN_LEVELS = 40, 6.0


@pytest.mark.filterwarnings("ignore::train.data.decode.SmallSourceWarning")
def test_decode_jpeg_on_the_gpu_matches_decode_image_within_the_stated_levels():
    """nvJPEG's decode and the GPU's resize held to the CPU path's bound where the source shrinks
    (what --decode-device cuda is for: 1024-px CelebA-HQ to 512 or 1024), to a looser one where it grows."""
    from tests.test_device_decode import CASES, MAX_LEVELS, MEAN_LEVELS, levels_apart, photo
    from train.data.decode import decode_image
    from train.data.device_decode import decode_batch, encoded_or_decoded

    apart, within = {}, {}
    for seed, ((width, height), resolution, crop, mode) in enumerate(CASES):
        data = photo(width, height, seed, mode)
        batch, failed = decode_batch([encoded_or_decoded(data, resolution, crop)], resolution, crop, torch.device("cuda"))
        assert failed == 0 and batch.device.type == "cuda" and batch.shape == (1, 3, resolution, resolution)
        case = f"{width}x{height} {mode} -> {resolution} crop {crop}"
        apart[case] = most, mean = levels_apart(batch[0].cpu(), decode_image(data, resolution, crop))
        grows = resolution > min(width, height, crop or width)
        bound = (UPSAMPLED_MAX_LEVELS, UPSAMPLED_MEAN_LEVELS) if grows else (MAX_LEVELS, MEAN_LEVELS)
        within[case] = most <= bound[0] and mean <= bound[1]
    assert all(within.values()), apart


def test_a_run_with_decode_device_cuda_trains_from_jpegs_decoded_on_the_gpu(run, tmp_path):
    from tests.test_device_decode import photo

    images = tmp_path / "images"
    images.mkdir()
    for seed in range(24):
        (images / f"{seed}.jpg").write_bytes(photo(96, 80, seed))
    out = tmp_path / "run"
    result = run("train/wgangp.py", "--debug", "--data", str(images), "--decode-device", "cuda", "--resolution", "64",
                 "--batch-size", "8", "--max-steps", "6", "--log-every", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    records = read_metrics(out / "metrics.jsonl")
    assert records and all(np.isfinite(r[k]) for r in records for k in ("d_loss", "g_loss", "gp"))
    assert records[-1]["data_read"] >= 6 * 8 and records[-1]["data_skipped"] == 0


def test_a_prepared_folder_trains_from_pinned_batches_on_the_gpu(run, tmp_path):
    """On a GPU a prepared folder's batches are copied into pinned memory (the H2D copy does not
    wait for the step); they are the unpinned stream's."""
    from tests.fixtures import write_image_folder
    from tests.test_prepare import prepared, stream

    prepared(str(write_image_folder(tmp_path / "images", rows=24)), tmp_path / "pixels")
    pinned = stream(tmp_path / "pixels", batch=8, pin_memory=True, hflip=True)
    plain = stream(tmp_path / "pixels", batch=8, hflip=True)
    for _ in range(5):
        batch = next(pinned)
        assert batch.is_pinned() and torch.equal(batch, next(plain))
    out = tmp_path / "run"
    result = run("train/dcgan.py", "--debug", "--data", f"prepared:{tmp_path / 'pixels'}", "--max-steps", "6",
                 "--log-every", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    records = read_metrics(out / "metrics.jsonl")
    assert records[-1]["data_read"] >= 6 * 8 and all(np.isfinite(r["d_loss"]) for r in records)


def test_streamed_batches_arrive_pinned_and_their_workers_slots_are_free_at_once(tmp_path):
    """Decoding workers write into reused slots (train/data/batch_slots.py); pinning copies each
    batch, so every batch can be held while the slots go on being reused."""
    from tests.fixtures import write_parquet_shards
    from tests.test_batch_slots import BATCHES, decoded, stream

    source = stream(write_parquet_shards(tmp_path, rows=120, shards=2), pin_memory=True)
    try:
        held = [next(source) for _ in range(BATCHES)]
        assert all(batch.is_pinned() and torch.equal(batch, decoded(batch)) for batch in held)
        assert source.batches_in_new_memory == 0
    finally:
        source.close()
