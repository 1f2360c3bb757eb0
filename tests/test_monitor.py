"""train/report/monitor.py: collapse and divergence warnings from loss traces and fixed-noise samples."""
import math

import pytest
import torch

from train.report.monitor import (
    CollapseMonitor,
    CollapseThresholds,
    mean_pairwise_distance,
)

# metrics.jsonl of `train/wgangp.py --debug` and `train/lightweight_gan.py --debug` (steps 5..40)
WGANGP_DEBUG = {
    "d_loss": [-4.5297, -11.3879, -16.113, -19.9076, -22.7841, -25.2824, -27.955, -30.0118],
    "g_loss": [3.5503, 6.8534, 8.8701, 10.5753, 11.9212, 13.1535, 14.3815, 15.3724],
}
FASTGAN_DEBUG = {
    "d_loss": [2.339, 2.3466, 2.438, 2.2605, 2.2835, 2.0844, 2.1431, 2.344],
    "hinge": [1.8087, 1.781, 1.7982, 1.8036, 1.804, 1.7197, 1.6364, 1.9084],
    "g_loss": [-0.0205, -0.029, -0.0891, -0.2251, -0.3149, -0.2987, -0.2413, -0.0919],
}


def lines(trace: dict[str, list[float]], log_every: int = 50, first_step: int | None = None) -> list[dict]:
    length = len(next(iter(trace.values())))
    first_step = first_step or log_every
    return [{"step": first_step + i * log_every, **{k: v[i] for k, v in trace.items()}} for i in range(length)]


def feed(monitor: CollapseMonitor, records: list[dict]) -> list[tuple[int, str]]:
    return [(r["step"], w) for r in records for w in monitor.observe_losses(r)]


def healthy_trace(n: int = 400, seed: int = 0) -> dict[str, list[float]]:
    """WGAN-GP-like: the critic's loss starts positive, crosses 0 once and settles noisily negative."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float64)
    d_loss = 2.0 - 8.0 * (1 - torch.exp(-t / 20)) + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    g_loss = 5.0 * torch.exp(-t / 100) + 0.2 * torch.randn(n, generator=g, dtype=torch.float64)
    return {"d_loss": d_loss.tolist(), "g_loss": g_loss.tolist(), "gp": (0.1 + 0.0 * t).tolist()}


def test_default_thresholds_stay_silent_on_the_real_debug_traces():
    assert feed(CollapseMonitor(CollapseThresholds()), lines(WGANGP_DEBUG, log_every=5)) == []
    assert feed(CollapseMonitor(CollapseThresholds(), critic_key="hinge"), lines(FASTGAN_DEBUG, log_every=5)) == []
    # even with a window as short as the debug run, neither generator loss is anywhere near flat
    short = CollapseThresholds(flat_window=2, patience=1)
    assert feed(CollapseMonitor(short), lines(WGANGP_DEBUG, log_every=5)) == []
    assert feed(CollapseMonitor(short, critic_key="hinge"), lines(FASTGAN_DEBUG, log_every=5)) == []


@pytest.mark.parametrize("seed", range(5))
def test_noisy_decreasing_losses_raise_no_warning(seed):
    assert feed(CollapseMonitor(CollapseThresholds()), lines(healthy_trace(seed=seed))) == []


def test_critic_loss_crossing_zero_for_fewer_lines_than_patience_raises_no_warning():
    d_loss = [1.0, 0.5, 0.0004, -0.0002, 0.0007, 0.0, -0.5, -1.0] + [-2.0] * 10
    trace = {"d_loss": d_loss, "g_loss": [float(i) for i in range(len(d_loss))]}
    assert feed(CollapseMonitor(CollapseThresholds(patience=5)), lines(trace)) == []


def test_critic_loss_stuck_near_zero_warns_once_after_patience_lines():
    d_loss = [-3.0, -1.0] + [2e-4 * (-1) ** i for i in range(30)]
    trace = {"d_loss": d_loss, "g_loss": [float(i) for i in range(len(d_loss))]}
    warnings = feed(CollapseMonitor(CollapseThresholds(loss_floor=1e-3, patience=5)), lines(trace, log_every=100))
    assert len(warnings) == 1
    step, message = warnings[0]
    assert step == 700  # lines 3..7 near 0: the fifth ends at step 700
    assert message.startswith("collapse: d_loss ~ 0") and "5 log lines" in message and "step 700" in message


def test_fastgan_hinge_at_zero_warns_though_its_d_loss_holds_the_reconstruction_term():
    trace = {"d_loss": [0.4] * 10, "hinge": [1.8, 0.9, 0.2] + [0.0] * 7, "g_loss": [float(i) for i in range(10)]}
    assert feed(CollapseMonitor(CollapseThresholds()), lines(trace)) == []
    warnings = feed(CollapseMonitor(CollapseThresholds(), critic_key="hinge"), lines(trace))
    assert [step for step, _ in warnings] == [400]
    assert "hinge ~ 0" in warnings[0][1]


def test_a_signal_warns_again_only_after_it_has_cleared():
    near_zero, live = [0.0] * 8, [-1.0, -2.0]
    d_loss = near_zero + live + near_zero
    trace = {"d_loss": d_loss, "g_loss": [float(i) for i in range(len(d_loss))]}
    warnings = feed(CollapseMonitor(CollapseThresholds(patience=3)), lines(trace, log_every=1))
    assert [step for step, _ in warnings] == [3, 13]


def test_flat_generator_loss_warns_once_the_window_is_flat():
    g_loss = [5.0, 3.0, 2.0] + [1.2345 + 1e-5 * (-1) ** i for i in range(40)]
    trace = {"d_loss": [-1.0 - 0.1 * i for i in range(len(g_loss))], "g_loss": g_loss}
    warnings = feed(CollapseMonitor(CollapseThresholds(flat_window=10, flat_tolerance=1e-3)), lines(trace, log_every=10))
    assert len(warnings) == 1
    step, message = warnings[0]
    assert step == 130  # the first window holding only flat lines: lines 4..13
    assert message.startswith("collapse: g_loss flat") and "10 log lines" in message and "around 1.23" in message


def test_generator_loss_window_shorter_than_flat_window_never_counts_as_flat():
    trace = {"d_loss": [-1.0] * 9, "g_loss": [0.5] * 9}
    assert feed(CollapseMonitor(CollapseThresholds(flat_window=10)), lines(trace)) == []


@pytest.mark.parametrize("key, value", [("d_loss", math.nan), ("g_loss", math.inf), ("gp", -math.inf)])
def test_a_non_finite_value_of_any_loss_warns_at_once_naming_it(key, value):
    monitor = CollapseMonitor(CollapseThresholds())
    record = {"step": 50, "d_loss": -1.0, "g_loss": 2.0, "gp": 0.1, key: value}
    warnings = monitor.observe_losses(record)
    assert warnings == [f"divergence: non-finite {key}={value} at step 50"]
    assert monitor.observe_losses({**record, "step": 100}) == []  # same episode: said once
    assert monitor.observe_losses({"step": 150, "d_loss": -1.0, "g_loss": 2.0, "gp": 0.1}) == []
    assert len(monitor.observe_losses({**record, "step": 200})) == 1  # cleared, then back


def diverse_samples(seed: int, n: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)).tanh()


def test_diverse_samples_raise_no_warning():
    monitor = CollapseMonitor(CollapseThresholds())
    assert [w for step in range(1, 11) for w in monitor.observe_samples(step * 1000, diverse_samples(step))] == []


def test_samples_shrinking_to_one_point_warn_once_when_diversity_halves():
    monitor = CollapseMonitor(CollapseThresholds(diversity_drop=0.5))
    base, centre = diverse_samples(0), diverse_samples(0)[:1]
    warnings = []
    for i, spread in enumerate([0.3, 1.0, 0.9, 0.6, 0.45, 0.2, 0.05, 0.0]):
        warnings += [(i, w) for w in monitor.observe_samples((i + 1) * 1000, centre + spread * (base - centre))]
    assert [i for i, _ in warnings] == [4]
    assert warnings[0][1].startswith("collapse: sample diversity") and "(step 2000) at step 5000" in warnings[0][1]


def test_non_finite_samples_warn_as_divergence():
    samples = diverse_samples(0)
    samples[3, 0, 0, 0] = math.nan
    assert CollapseMonitor(CollapseThresholds()).observe_samples(7, samples) == ["divergence: non-finite samples at step 7"]


def test_mean_pairwise_distance_is_the_mean_l2_distance_over_all_pairs():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # distances 5, 10, 5
    assert mean_pairwise_distance(points) == pytest.approx(20 / 3)
    images = torch.zeros(2, 3, 2, 2)
    images[1] = 1.0
    assert mean_pairwise_distance(images) == pytest.approx(math.sqrt(12))
    with pytest.raises(ValueError, match="at least 2 samples"):
        mean_pairwise_distance(points[:1])


def test_a_resumed_monitor_warns_exactly_like_an_uninterrupted_one(tmp_path):
    thresholds = CollapseThresholds(patience=4, flat_window=6)
    d_loss = [-2.0, -1.0] + [0.0] * 10
    g_loss = [4.0, 3.0, 2.0] + [1.0] * 9
    records = lines({"d_loss": d_loss, "g_loss": g_loss}, log_every=10)
    spreads = [1.0, 0.8, 0.3, 0.1]

    def run(monitor: CollapseMonitor, part: slice) -> list:
        out = []
        for i in range(len(records))[part]:
            out += monitor.observe_losses(records[i])
            if i % 3 == 0:
                out += monitor.observe_samples(records[i]["step"], spreads[i // 3] * diverse_samples(0))
        return out

    whole = run(CollapseMonitor(thresholds), slice(None))
    first = CollapseMonitor(thresholds)
    before = run(first, slice(0, 5))
    torch.save(first.state_dict(), tmp_path / "monitor.pt")
    resumed = CollapseMonitor(thresholds)
    resumed.load_state_dict(torch.load(tmp_path / "monitor.pt", weights_only=True))
    assert resumed.state_dict() == first.state_dict()
    after = run(resumed, slice(5, None))
    assert len(whole) == 3 and before + after == whole  # critic near 0, g_loss flat, diversity fell


@pytest.mark.parametrize(
    "field, value", [("patience", 0), ("flat_window", 0), ("loss_floor", -1.0), ("flat_tolerance", -1e-3), ("diversity_drop", 1.0)]
)
def test_thresholds_out_of_range_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        CollapseThresholds(**{field: value})


def test_stop_on_collapse_stops_with_a_checkpoint_exit_code_3_and_an_alert(run, tmp_path):
    """A loss floor no loss can stay above makes the alarm fire at the first log line (step 5)."""
    from tests.wandb_records import offline_runs, read_run
    from train.report.metrics import read_metrics

    out = tmp_path / "r"
    alarm = ["--collapse-loss-floor", "1000", "--collapse-patience", "1", "--stop-on-collapse"]
    result = run("train/wgangp.py", "--debug", *alarm, "--wandb-mode", "offline", "--out", str(out))
    assert result.returncode == 3, result.stderr[-3000:]
    assert "warning: collapse: d_loss ~ 0" in result.stdout
    assert "stopped at step 5: collapse alarm" in result.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000005"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [5]
    (wandb_run,) = offline_runs(out)
    assert any(title.startswith("facegan: collapse") for title, _ in read_run(wandb_run)["alerts"])
    # The episode is saved as already reported: the resumed run goes on to the end.
    resumed = run("train/wgangp.py", "--resume", "--max-steps", "10", "--wandb-mode", "disabled", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [5, 10]
