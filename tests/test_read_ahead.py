"""train/data/read_ahead.py: a prepared folder read ahead in a thread (what a GPU run does) is the
same stream, batch for batch, with the same checkpoints and the same errors; closing it ends its
thread however full its queue."""
import io
import threading

import pytest
import torch

from tests.test_prepare import ROWS, ids, stream  # noqa: F401 (ids: the prepared folder, a fixture)
from train.data import DataError
from train.data.prepared import PreparedShardWarning
from train.data.read_ahead import ReadAhead


def read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "prepared-read-ahead"]


def test_batches_read_ahead_are_the_streams_own_and_its_checkpoint_counts_only_those_taken(ids):  # noqa: F811
    ahead, plain, running = stream(ids, hflip=True, read_ahead=3), stream(ids, hflip=True), read_ahead_threads()
    assert isinstance(ahead, ReadAhead) and ahead.workers == 0
    for _ in range(3):
        assert torch.equal(next(ahead), next(plain))
    # the thread has read up to 3 batches further; the checkpoint names the step's batches only
    assert ahead.state_dict() == plain.state_dict() and ahead.counters() == plain.counters() == {"data_read": 12, "data_skipped": 0}
    buffer = io.BytesIO()
    torch.save(ahead.state_dict(), buffer)
    buffer.seek(0)
    resumed = stream(ids, hflip=True, read_ahead=2)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(ROWS // 4):  # the rest of the first pass and most of the second
        assert torch.equal(next(resumed), next(plain))
    assert resumed.counters() == plain.counters()
    for source in (ahead, resumed):
        source.close()
    assert read_ahead_threads() == running


def test_a_state_loaded_while_reading_ahead_drops_the_batches_read_and_continues_from_it(ids):  # noqa: F811
    """A divergence rollback loads an earlier checkpoint into the running stream."""
    ahead, plain = stream(ids, read_ahead=2), stream(ids)
    saved = ahead.state_dict()
    first = [next(ahead) for _ in range(5)]
    ahead.load_state_dict(saved)
    again = [next(ahead) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(torch.equal(a, next(plain)) for a in again)
    ahead.close()


def test_a_share_whose_shards_all_fail_raises_where_its_batch_was_due_and_again_after(ids, tmp_path):  # noqa: F811
    folder = tmp_path / "pixels"
    folder.mkdir()
    for path in ids.iterdir():
        (folder / path.name).write_bytes(path.read_bytes()[:-1] if path.suffix == ".npy" else path.read_bytes())
    source, running = stream(folder, read_ahead=2), read_ahead_threads()
    with pytest.warns(PreparedShardWarning), pytest.raises(DataError, match="every shard of this process's share failed its check"):
        next(source)
    assert read_ahead_threads() == running  # its thread ended with the error
    with pytest.raises(DataError, match="every shard of this process's share failed its check"):
        next(source)
    source.close()


class Drawn:
    """The prepared stream, saying when the thread has drawn `count` batches."""

    def __init__(self, inner, count: int):
        self.inner, self.count, self.drawn = inner, count, threading.Event()
        self.workers, self.spec = inner.workers, inner.spec
        self.state_dict, self.counters, self.close = inner.state_dict, inner.counters, inner.close

    def __next__(self):
        batch = next(self.inner)
        self.count -= 1
        if self.count == 0:
            self.drawn.set()
        return batch


def test_closing_ends_the_thread_blocked_on_its_full_queue(ids):  # noqa: F811
    drawn = Drawn(stream(ids, batch=1), count=3)  # one taken, one queued, the third waiting for room
    source = ReadAhead(drawn, depth=1)
    next(source)
    assert drawn.drawn.wait(timeout=60)
    thread = source._thread
    source.close()
    assert not thread.is_alive()
