"""train/data/batch_slots.py: decoding workers write batches into reused shared memory, and a slot
is written again only once nothing the rank handed out still reads it."""
import gc
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from tests.conftest import ROOT
from tests.fixtures import id_image, jpeg_bytes, row_ids, write_parquet_shards
from train.data import DataOptions, open_stream, parse_data_spec
from train.data.batch_slots import BatchSlots
from train.data.decode import decode_image
from train.data.streaming import PREFETCH_FACTOR
from train.run.batches import StepBatches

BATCHES = 12  # three times the slots a worker has with one batch in hand


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_parquet_shards(tmp_path_factory.mktemp("parquet"), rows=120, shards=2)


def stream(shards, **kwargs):
    options = DataOptions(parse_data_spec(f"parquet:{shards}"), resolution=32, workers=1, shuffle_buffer=20, hflip=False)
    return open_stream(options, batch_size=10, seed=0, rank=0, world_size=1, **kwargs)


def decoded(batch: torch.Tensor) -> torch.Tensor:
    """What the rank's own decode_image makes of the rows the batch holds."""
    return torch.stack([decode_image(jpeg_bytes(id_image(row)), 32) for row in row_ids(batch)])


def test_a_worker_decodes_into_reused_slots_what_decode_image_makes_of_each_row(shards):
    source = stream(shards)
    try:
        assert source.slots is not None and source.slots.per_worker == PREFETCH_FACTOR + 2
        for _ in range(BATCHES):
            batch = next(source)
            assert torch.equal(batch, decoded(batch))
        assert source.batches_in_new_memory == 0
    finally:
        source.close()


def test_batches_held_are_never_written_over_and_the_worker_makes_new_ones_meanwhile(shards):
    source = stream(shards)
    try:
        held = [next(source) for _ in range(BATCHES)]
        as_received = [batch.clone() for batch in held]
        view = held[3][2:5]  # a view alone keeps its batch's slot
        held[3] = None
        assert source.batches_in_new_memory >= BATCHES - source.slots.per_worker
        for _ in range(BATCHES):
            next(source)  # dropped at once: slots only the held batches do not hold
        assert all(torch.equal(batch, before) for batch, before in zip(held, as_received) if batch is not None)
        assert torch.equal(view, as_received[3][2:5])
        made_new = source.batches_in_new_memory
        held.clear()
        del view
        for _ in range(BATCHES):
            batch = next(source)
            assert torch.equal(batch, decoded(batch))
        # only the batches already under way while every slot was held come in new memory
        assert source.batches_in_new_memory - made_new <= PREFETCH_FACTOR
    finally:
        source.close()


def test_with_pinning_asked_for_each_slot_is_free_as_soon_as_its_batch_arrives(shards):
    """Without an accelerator nothing is pinned, so the rank copies the slot instead: every batch
    can be held and none needs new memory. (tests/test_gpu.py checks the pinned batches on a GPU.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        source = stream(shards, pin_memory=True)
        try:
            held = [next(source) for _ in range(BATCHES)]
            assert all(torch.equal(batch, decoded(batch)) for batch in held)
            assert source.batches_in_new_memory == 0
        finally:
            source.close()


def test_a_slot_is_taken_by_its_own_worker_and_freed_once_no_tensor_views_it():
    slots = BatchSlots(workers=2, per_worker=2, batch_size=3, resolution=4)
    assert [slots.take(1), slots.take(1), slots.take(1)] == [2, 3, None]
    assert [slots.take(0), slots.take(0)] == [0, 1]
    batch = slots.lease(1)
    assert batch.shape == (3, 3, 4, 4) and batch.dtype == torch.uint8
    view = batch[0].flatten()
    del batch
    gc.collect()
    assert slots.take(0) is None  # the view still reads slot 1
    del view
    assert slots.take(0) == 1
    slots.free(2)
    assert slots.take(1) == 2


SMALL_SHM_READER = """
import sys
from train.data import DataOptions, open_stream, parse_data_spec
options = DataOptions(parse_data_spec("parquet:" + sys.argv[1]), resolution=512, workers=1, shuffle_buffer=20, hflip=False)
source = open_stream(options, batch_size=10, seed=0, rank=0, world_size=1)
print("slots:", source.slots, "batches:", [tuple(next(source).shape) for _ in range(3)], flush=True)
source.close()
"""


@pytest.mark.slow
def test_a_dev_shm_too_small_for_the_slots_is_said_in_one_line_and_batches_still_come(shards):
    """Docker's /dev/shm is 64 MB unless told otherwise: here a 20-MB one (a private mount
    namespace) against 31 MB of slots at 512 px; batches of 7.9 MB still fit one at a time."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -m (root, or a user namespace) to mount a small /dev/shm")
    command = f"mount -t tmpfs -o size=20M tmpfs /dev/shm && exec {sys.executable} -W ignore -c '{SMALL_SHM_READER}' {shards}"
    result = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: /dev/shm has no room for 30 MB of reused batches (No space left on device" in result.stdout
    assert "slots: None batches: [(10, 3, 512, 512), (10, 3, 512, 512), (10, 3, 512, 512)]" in result.stdout


def test_a_step_holding_all_its_critic_batches_never_runs_its_worker_out_of_slots(shards):
    """WGAN-GP draws its 5 critic batches before the step's first update (train/run/batches.py):
    the loop opens the stream with that many batches in hand, and the worker's slots cover them."""
    source = stream(shards, batches_in_hand=5)
    batches = StepBatches(source, source.spec, torch.device("cpu"), batches_per_step=5)
    try:
        assert source.slots.per_worker == PREFETCH_FACTOR + 1 + 5
        for _ in range(6):
            assert batches.fill() is None
            for _ in range(5):
                batches.next_real()
        assert source.batches_in_new_memory == 0
    finally:
        source.close()
