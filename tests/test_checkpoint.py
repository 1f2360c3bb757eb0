"""train/run/checkpoint.py: atomic, pruned, safely loadable checkpoints."""
import torch
from accelerate import Accelerator
from torch import nn

from train.data import DataOptions, open_stream, parse_data_spec
from train.gan.objectives import WGANGP
from train.report.metrics import StatWindow
from train.report.monitor import CollapseMonitor, CollapseThresholds
from train.run.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from train.run.state import TrainState


def setup():
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def train_state(seed: int = 0, run_id: str = "abcd1234") -> TrainState:
    toy = DataOptions(parse_data_spec("toy:8gaussians"), resolution=64)
    return TrainState(
        latent_rng=torch.Generator().manual_seed(seed),
        stream=open_stream(toy, batch_size=4, seed=seed, rank=0, world_size=1),
        window=StatWindow(),
        objective=WGANGP(),
        monitor=CollapseMonitor(CollapseThresholds()),
        run_id=run_id,
    )


def save(accelerator, out, step, keep=3):
    state = train_state(seed=step)
    state.step, state.skipped_steps = step, 2
    state.window.add({"d_loss": torch.tensor(float(step))})
    return save_checkpoint(accelerator, out, state, {"module.weight": torch.full((2,), float(step))}, keep)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    accelerator, _, _ = setup()
    for step in (10, 20, 30, 40):
        save(accelerator, tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000030", "step_000040"]


def test_a_half_written_checkpoint_is_never_the_latest(tmp_path):
    accelerator, _, _ = setup()
    save(accelerator, tmp_path, 10)
    broken = tmp_path / "checkpoints" / "step_000020.tmp"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"truncated")
    assert latest_checkpoint(tmp_path).name == "step_000010"
    save(accelerator, tmp_path, 20)  # the next save at that step replaces the leftover
    assert latest_checkpoint(tmp_path).name == "step_000020"
    assert not broken.exists()


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    accelerator, _, _ = setup()
    save(accelerator, tmp_path, 10)
    save(accelerator, tmp_path, 10)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000010"]


def test_load_restores_weights_optimizer_and_rank_state(tmp_path):
    accelerator, model, optimizer = setup()
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    path = save(accelerator, tmp_path, 7)
    with torch.no_grad():
        model.weight.zero_()
    state = train_state(seed=0, run_id="other")
    ema_state = load_checkpoint(accelerator, path, state)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key])
    assert optimizer.state_dict()["state"][0]["step"].item() == 1
    assert (state.step, state.skipped_steps, state.run_id) == (7, 2, "abcd1234")
    saved = train_state(seed=7)  # the streams continue where the saved ones were
    assert torch.equal(state.latent_rng.get_state(), saved.latent_rng.get_state())
    assert torch.equal(next(state.stream), next(saved.stream))
    assert state.window.counts == {"d_loss": 1} and state.window.sums["d_loss"].item() == 7.0
    torch.testing.assert_close(ema_state["module.weight"], torch.full((2,), 7.0))


def test_a_rank_the_saved_run_did_not_have_continues_at_its_step_with_fresh_streams(tmp_path):
    accelerator, _, _ = setup()
    path = save(accelerator, tmp_path, 9)
    (path / "train_state_0.pt").rename(path / "train_state_5.pt")  # as if this process were rank 0 of more
    state = train_state(seed=1, run_id="fresh")
    load_checkpoint(accelerator, path, state)
    assert (state.step, state.run_id) == (9, "fresh")
    assert torch.equal(next(state.stream), next(train_state(seed=1).stream))
