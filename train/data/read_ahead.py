"""A batch stream read ahead in a thread, so a GPU step does not wait for the copy of its batch.

A prepared folder is read in the rank's own process (prepared_stream.py). On a GPU that read came
between steps, with the GPU idle: a 64-px DCGAN debug-sized run on an H200 waited for data 3.9-4.4%
of its step time (bench/data_wait.py, bench/reports/nvidia-h200-2026-12-04c/), where a batch of 8
takes the reader 20-50 us in a loop of reads alone. Read ahead, the copy is made while the GPU
computes: a thread fills a queue of `depth` batches, as a DataLoader's workers do for the other
sources.

The stream is the same: the thread draws the inner stream's batches in order, and hands each with
the inner stream's state and counters just after it, so a checkpoint records the batches the step
took (not those read ahead) and a resume continues exactly. An error of the inner stream (a
DataError: every shard damaged) is raised by the `next` that would have returned its batch.
"""
import queue
import threading
from typing import Any

import torch

from train.data.specs import DataError

_END = object()  # the thread's last item after an error


class ReadAhead:
    """`inner` read `depth` batches ahead in a daemon thread, started at the first batch asked for."""

    def __init__(self, inner: Any, depth: int = 2):
        if depth < 1:
            raise ValueError(f"read-ahead depth {depth}: at least 1")
        self.inner, self.depth = inner, depth
        self.workers = inner.workers
        self.spec = inner.spec
        self._state, self._counters = inner.state_dict(), inner.counters()
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __iter__(self) -> "ReadAhead":
        return self

    def __next__(self) -> torch.Tensor:
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._start()
        batch, state, counters = self._queue.get()
        if batch is _END:
            self._error = state
            self._join()
            raise self._error
        self._state, self._counters = state, counters
        return batch

    def _start(self) -> None:
        # The CUDA device is the calling thread's: a thread starts on device 0, and pinning memory
        # there would open a context on GPU 0 for every rank of a node (DataLoader's pin thread sets
        # it the same way).
        device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        self._queue, self._stop = queue.Queue(self.depth), threading.Event()
        self._thread = threading.Thread(target=self._read, args=(self._queue, self._stop, device),
                                        name="prepared-read-ahead", daemon=True)
        self._thread.start()

    def _read(self, out: queue.Queue, stop: threading.Event, device: int | None) -> None:
        if device is not None:
            torch.cuda.set_device(device)
        while not stop.is_set():
            try:
                batch = next(self.inner)
            except BaseException as error:  # handed to the consumer, raised where its batch was due
                out.put((_END, error if isinstance(error, Exception) else DataError(f"--data {self.spec}: {error!r}"), None))
                return
            out.put((batch, self.inner.state_dict(), self.inner.counters()))

    def _join(self) -> None:
        """Stop the thread: once the flag is set and the queue emptied, its one pending put goes
        through and it ends at its next look at the flag."""
        if self._thread is None:
            return
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join()
        self._thread = None

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        """The batches read ahead are dropped; the inner stream continues from `state`."""
        self._join()
        self.inner.load_state_dict(state)
        self._state, self._counters, self._error = self.inner.state_dict(), self.inner.counters(), None

    def close(self) -> None:
        self._join()
        self.inner.close()
