"""Hub datasets, parquet shards and image folders through one `datasets` streaming pipeline.

Per rank: the stream is split by node (whole shards where the count allows, else row groups, else
every world_size-th example), shuffled with the same seed on every rank, decoded in DataLoader
workers (never more than the rank's shards), and resumable through StatefulDataLoader.
"""
import copy
import random
import signal
import warnings
from typing import Iterator

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import IterableDataset, default_collate, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from train.common.seeds import SeedPurpose, stream_seed
from train.common.stop_signals import STOP_SIGNALS
from train.data.batch_slots import BatchSlots
from train.data.decode import ExtremeImage, ExtremeImageWarning, decode_pixels, image_bytes, row_name
from train.data.device_decode import BrokenBatch, decode_batch, encoded_or_decoded
from train.data.options import DataOptions
from train.data.specs import EMPTY_PASSES_LIMIT, DataError, DataSpec, DataSpecError, parquet_files

PREFETCH_FACTOR = 2  # batches each worker has under way or waiting (the DataLoader's default)


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's start: Slurm signals every process of a job, and the rank decides when
    to stop; a worker killed by SIGUSR1 or SIGTERM would fail the step before the rank's checkpoint.
    (A worker still leaves on the loader's own shutdown, or once its rank is gone.)"""
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)


def load_source(spec: DataSpec, split: str = "train") -> datasets.IterableDataset:
    """The streaming dataset a spec names (no rows are read yet)."""
    if spec.kind == "parquet":
        return datasets.load_dataset("parquet", data_files={"train": parquet_files(spec.name)}, split="train", streaming=True)
    if spec.kind == "folder":
        return datasets.load_dataset("imagefolder", data_dir=spec.name, split="train", streaming=True)
    try:
        return datasets.load_dataset(spec.name, split=split, streaming=True)
    except Exception as error:  # offline, unreachable, unknown id, gated: all end the same way for a user
        raise DataSpecError(
            f"--data {spec}: cannot open it on the Hugging Face hub ({type(error).__name__}: {error})."
            f" To train without the hub, copy it where there is internet with"
            f" `python -m train.data download {spec} --to DIR` and train with --data 'parquet:DIR/*.parquet',"
            " or train from a local image folder with --data path/to/images"
        ) from None


def image_column_of(dataset: datasets.IterableDataset, spec: DataSpec, requested: str | None) -> str:
    features = dataset.features or {}
    images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if requested:
        if requested not in features:
            raise DataSpecError(f"--image-column {requested}: --data {spec} has columns {', '.join(features)}")
        feature = features[requested]
        if not (isinstance(feature, datasets.Image) or getattr(feature, "dtype", None) in ("binary", "large_binary")):
            choices = f"its image columns: {', '.join(images)}" if images else "it has no Image column"
            raise DataSpecError(
                f"--image-column {requested}: that column of --data {spec} holds {feature}, not images; {choices}"
            )
        return requested
    if len(images) != 1:
        found = f"image columns {', '.join(images)}" if images else f"no Image column (columns: {', '.join(features)})"
        raise DataSpecError(f"--data {spec}: {found}; name the one to train on with --image-column")
    return images[0]


def _read_row_groups(fragments: list[tuple[str, int]]) -> Iterator[dict]:
    for path, group in fragments:
        yield from pq.ParquetFile(path).read_row_group(group).to_pylist()


def row_group_source(files: list[str], features: datasets.Features) -> datasets.IterableDataset:
    """Local parquet files as one shard per row group (datasets 4.8's own reshard() keeps whole files)."""
    fragments = [(path, group) for path in files for group in range(pq.ParquetFile(path).num_row_groups)]
    return datasets.IterableDataset.from_generator(_read_row_groups, gen_kwargs={"fragments": fragments}, features=features)


def shard_for_rank(
    dataset: datasets.IterableDataset, spec: DataSpec, rank: int, world_size: int
) -> tuple[datasets.IterableDataset, str]:
    """Split for this rank: whole shards when they divide evenly, else local parquet row groups, else
    every world_size-th example. Returns the dataset and how it was split (for the log)."""
    if world_size == 1:
        return dataset, f"{dataset.num_shards} shard{'s' if dataset.num_shards != 1 else ''} on one process"
    how = f"{dataset.num_shards} shards over {world_size} processes"
    if dataset.num_shards % world_size:
        by_group = row_group_source(parquet_files(spec.name), dataset.features) if spec.kind == "parquet" else None
        if by_group is not None and by_group.num_shards % world_size == 0:
            dataset, how = by_group, f"{by_group.num_shards} row groups over {world_size} processes"
        else:
            # every rank reads every shard and keeps one row in world_size
            how = f"one row in {world_size} on each process ({dataset.num_shards} shards do not divide evenly)"
    return split_dataset_by_node(dataset, rank=rank, world_size=world_size), how


class BatchUnderWay:
    """The rows decoded so far for one batch: into a BatchSlots slot (`slot`, `rows` its array), or
    as a list (`slot` None: in the rank's own process, in a worker with no free slot, and for JPEGs
    left encoded for --decode-device)."""

    def __init__(self, slots: BatchSlots | None, worker: int | None):
        self.slot = slots.take(worker) if slots is not None and worker is not None else None
        self.rows = slots.rows(self.slot) if self.slot is not None else []
        self.flipped: list[bool] = []

    def __len__(self) -> int:
        return len(self.flipped)

    def next_row(self) -> np.ndarray | None:
        """Where the next image is decoded: its row of the slot, or None (a new array)."""
        return self.rows[len(self)] if self.slot is not None else None

    def add(self, image: np.ndarray | torch.Tensor, flipped: bool) -> None:
        if self.slot is None:
            self.rows.append(image)
        self.flipped.append(flipped)


class DecodedBatches(IterableDataset):
    """Runs inside each DataLoader worker: endless epochs of the worker's shards, decoded into
    uint8 batches that carry how many rows were read and skipped to make them."""

    def __init__(self, source: datasets.IterableDataset, column: str, options: DataOptions, batch_size: int,
                 seed: int, rank: int, slots: BatchSlots | None = None, send_slot_pixels: bool = False):
        self.source, self.column, self.batch_size, self.seed, self.rank = source, column, batch_size, seed, rank
        self.resolution, self.celeba_crop, self.hflip = options.resolution, options.celeba_crop, options.hflip
        self.background = options.background
        self.batch_decode_device = options.batch_decode_device
        # slots: where workers decode (batch_slots.py); with send_slot_pixels (pinned batches) a slot's
        # pixels travel with its number, for the loader's pinning thread to copy.
        self.slots, self.send_slot_pixels = slots, send_slot_pixels
        self.epoch = 0

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id = worker.id if worker else None
        flips = random.Random(stream_seed(self.seed, self.rank, SeedPurpose.DATA_WORKER + (worker_id or 0)))
        batch, read, skipped, empty_passes = BatchUnderWay(self.slots, worker_id), 0, 0, 0
        while True:
            self.source.set_epoch(self.epoch)
            decoded_this_epoch = 0
            for row in self.source:
                read += 1
                # drawn for every row, skipped or not: the same draws whichever way the batch is made
                mirrored = self.hflip and flips.random() < 0.5
                if not self._decoded(row[self.column], mirrored, batch):
                    skipped += 1
                    continue
                decoded_this_epoch += 1
                if len(batch) == self.batch_size:
                    yield {**self._sent(batch), "read": read, "skipped": skipped}
                    batch, read, skipped = BatchUnderWay(self.slots, worker_id), 0, 0
            # Passes in a row with nothing readable: another would spin forever. Not one pass: with
            # every Nth row per process, a tiny source's share differs from pass to pass and one
            # pass can hold only its broken files.
            empty_passes = 0 if decoded_this_epoch else empty_passes + 1
            if empty_passes == EMPTY_PASSES_LIMIT:
                # Said in a batch, not raised: a worker's exception reaches the rank as a traceback.
                yield {"unreadable": read}
                return
            self.epoch += 1

    def _sent(self, batch: BatchUnderWay) -> dict:
        if batch.slot is not None:
            return {"slot": batch.slot, "images": self.slots.pixels[batch.slot]} if self.send_slot_pixels else {"slot": batch.slot}
        if self.batch_decode_device is not None:  # JPEGs still encoded: the rank decodes, then flips
            return {"encoded": batch.rows, "flipped": torch.tensor(batch.flipped)}
        # In a worker, default_collate stacks straight into shared memory; a torch.stack here would
        # be copied there once more when the batch is sent to the rank.
        return {"images": default_collate([torch.from_numpy(row) for row in batch.rows])}

    def _decoded(self, cell: dict, mirrored: bool, batch: BatchUnderWay) -> bool:
        """Adds the row's image to `batch`; False for a row skipped (and counted): corrupt, truncated
        or not an image, or an image of extreme shape or size, which a warning names as well."""
        data = b""
        try:
            data = image_bytes(cell)
            if self.batch_decode_device is not None:  # flipped on the device, with the batch
                image = encoded_or_decoded(data, self.resolution, self.celeba_crop, self.background)
            else:
                image = decode_pixels(data, self.resolution, self.celeba_crop, self.background, mirrored=mirrored, out=batch.next_row())
        except ExtremeImage as error:
            warnings.warn(f"skipped {row_name(cell, data)}: {error} (counted in data_skipped)", ExtremeImageWarning, stacklevel=1)
            return False
        except Exception:  # never fatal here: the rank judges the count (check_skipped)
            return False
        batch.add(image, mirrored)
        return True

    def state_dict(self) -> dict:
        # datasets returns its live state: copy it, it moves on with the next row
        return {"epoch": self.epoch, "source": copy.deepcopy(self.source.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.source.load_state_dict(state["source"])


def rank_source(options: DataOptions, rank: int, world_size: int) -> tuple[datasets.IterableDataset, str, str]:
    """This rank's rows, unshuffled: the dataset, its image column and how it was split (for the
    log). Split before shuffling: resharding must precede it."""
    spec = options.spec
    source = load_source(spec, options.split)
    column = image_column_of(source, spec, options.image_column)
    source, how = shard_for_rank(source, spec, rank, world_size)
    return source.select_columns([column]).cast_column(column, datasets.Image(decode=False)), column, how


class StreamingImages:
    """This rank's endless, resumable stream of uint8 image batches from a `datasets` source."""

    def __init__(self, options: DataOptions, *, batch_size: int, seed: int, rank: int, world_size: int,
                 pin_memory: bool = False, batches_in_hand: int = 1):
        """`batches_in_hand`: how many of its batches the consumer holds at once, at most (sizes the
        workers' reused batch memory, `slots`)."""
        self.spec = spec = options.spec
        self.options = options
        source, column, how = rank_source(options, rank, world_size)
        # The shuffle seed is the same on every rank, and DecodedBatches advances the epoch so every
        # pass is reshuffled.
        source = source.shuffle(seed=seed, buffer_size=options.shuffle_buffer)
        self.workers = min(options.workers, source.num_shards)
        self.slots = self._batch_slots(options, batch_size, batches_in_hand, rank) if self.workers else None
        if rank == 0:
            print(f"data {spec}: {how}, {self.workers} decoding worker{'s' if self.workers != 1 else ''} per process", flush=True)
        self.split_description = how
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*set_vital.*")  # torchdata 0.11 on torch >= 2.10
            self.loader = StatefulDataLoader(
                DecodedBatches(source, column, options, batch_size, seed, rank, self.slots, send_slot_pixels=pin_memory),
                batch_size=None,
                num_workers=self.workers,
                pin_memory=pin_memory,
                persistent_workers=self.workers > 0,
                worker_init_fn=ignore_stop_signals,
                prefetch_factor=PREFETCH_FACTOR if self.workers else None,
            )
        self._batches: Iterator[dict] | None = None
        self.read = self.skipped = 0
        self.batches_in_new_memory = 0  # from workers that found no free slot (for the bench and tests)

    def _batch_slots(self, options: DataOptions, batch_size: int, batches_in_hand: int, rank: int) -> BatchSlots | None:
        """The workers' reused batch memory, or None where they send encoded JPEGs or /dev/shm has
        no room for it (they then make each batch in new shared memory, as a DataLoader does)."""
        if options.batch_decode_device is not None:
            return None
        per_worker = BatchSlots.per_worker_for(PREFETCH_FACTOR, batches_in_hand, self.workers)
        try:
            return BatchSlots(self.workers, per_worker, batch_size, options.resolution)
        except RuntimeError as error:  # torch's "unable to allocate shared memory(shm) for file ...: No space left on device"
            if rank == 0:
                size = self.workers * per_worker * batch_size * 3 * options.resolution**2
                print(f"data: /dev/shm has no room for {size / 2**20:.0f} MB of reused batches"
                      f" ({str(error).splitlines()[0].rsplit(': ', 1)[-1]}); each batch takes new shared memory instead"
                      " (in Docker, a larger --shm-size or --ipc=host)", flush=True)
            return None

    def __iter__(self) -> "StreamingImages":
        return self

    def __next__(self) -> torch.Tensor:
        if self._batches is None:
            self._batches = iter(self.loader)
            if self.workers:
                # torch's SIGCHLD handler raises "DataLoader worker ... exited unexpectedly" from
                # wherever the rank happens to be (a backward, a checkpoint write). Without it the
                # loader finds the dead worker while waiting for its next batch, in __next__, where
                # the loop stops the run cleanly at a step boundary.
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        batch = next(self._batches)
        if "unreadable" in batch:
            raise DataError(
                f"--data {self.spec}: not one readable image in {EMPTY_PASSES_LIMIT} passes over this process's share of it"
                f" ({batch['unreadable']} rows tried: empty, truncated or not images); repair or remove those"
                " files, or point --data at readable images"
            )
        self.read += batch["read"]
        self.skipped += batch["skipped"]
        if "slot" in batch:
            return self._from_slot(batch)
        if "images" in batch:
            self.batches_in_new_memory += self.slots is not None
            return batch["images"]
        return self._decoded_here(batch)

    def _from_slot(self, batch: dict) -> torch.Tensor:
        """A batch in its worker's slot (batch_slots.py): pinned, it is a copy already and the slot
        is freed now; else the slot itself, freed when the batch and its views are gone."""
        if "images" not in batch:
            return self.slots.lease(batch["slot"])
        images = batch["images"]
        if not images.is_pinned():  # pinning asked for, but the loader had no accelerator to pin for
            images = images.clone()
        self.slots.free(batch["slot"])
        return images

    def _decoded_here(self, batch: dict) -> torch.Tensor:
        """A batch of encoded JPEGs decoded on --decode-device; a JPEG that fails counts as skipped."""
        device = torch.device(self.options.batch_decode_device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU, as Accelerate set it
        try:
            images, failed = decode_batch(batch["encoded"], self.options.resolution, self.options.celeba_crop, device)
        except BrokenBatch as error:
            raise DataError(f"--data {self.spec}: {error} (--decode-device {device.type}); check the files,"
                            " or decode them in the workers without --decode-device, which skips and counts each") from None
        self.skipped += failed
        flipped = batch["flipped"].to(device)[:, None, None, None]
        return torch.where(flipped, images.flip(-1), images)

    def counters(self) -> dict[str, int]:
        return {"data_read": self.read, "data_skipped": self.skipped}

    def close(self) -> None:
        """Shut the decoding workers down now, whatever state the run is in: left to interpreter
        exit, multiprocessing would join workers that ignore its SIGTERM (they must outlive a
        Slurm SIGTERM until their rank's checkpoint), and wait forever."""
        iterator = getattr(self.loader, "_iterator", None)  # persistent workers live with it
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._batches = None

    def state_dict(self) -> dict:
        return {"loader": self.loader.state_dict(), "read": self.read, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        self.read, self.skipped = int(state["read"]), int(state["skipped"])
        self._batches = None
