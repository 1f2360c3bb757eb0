"""train/checkpoint.py: atomic, pruned, safely loadable checkpoints."""
import torch
from accelerate import Accelerator
from torch import nn

from train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint


def setup():
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def save(accelerator, out, step, keep=3):
    rank_state = {"step": step, "noise_rng": torch.Generator().manual_seed(step).get_state(), "data": {"epoch": 1}}
    return save_checkpoint(accelerator, out, step, rank_state, {"module.weight": torch.full((2,), float(step))}, keep)


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
    rank_state, ema_state = load_checkpoint(accelerator, path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key])
    assert optimizer.state_dict()["state"][0]["step"].item() == 1
    assert rank_state["step"] == 7 and rank_state["data"] == {"epoch": 1}
    torch.testing.assert_close(ema_state["module.weight"], torch.full((2,), 7.0))
