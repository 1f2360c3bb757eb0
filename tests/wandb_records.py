"""Read an offline W&B run back from its own .wandb file: the records wandb-core wrote, parsed
with wandb's protobuf classes (its LevelDB-log framing: 32 KiB blocks of CRC + length + type)."""
import json
import struct
import time
from pathlib import Path

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    ident, _, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", f"not a W&B transaction log ({ident!r})"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_run(run_dir: Path, timeout: float = 60) -> dict:
    """{"run_id", "name", "config": {...}, "history": [{key: value, ...}], "alerts": [(title, text)],
    "preempting": marked as preempted}, once the file holds the run's exit record: wandb-core may
    still be writing its last records when the run's process has returned from finishing it."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while not (records := _records(log)) or records[-1].WhichOneof("record_type") != "exit":
        if time.monotonic() > deadline:
            kinds = [record.WhichOneof("record_type") for record in records]
            raise AssertionError(f"{log}: no exit record after {timeout:.0f} s, only {kinds}")
        time.sleep(0.1)
    run = {"run_id": None, "name": None, "config": {}, "history": [], "alerts": [], "preempting": False}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["run_id"], run["name"] = record.run.run_id, record.run.display_name
        elif kind == "config":
            run["config"].update({item.key: json.loads(item.value_json) for item in record.config.update if item.key})
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or ".".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            run["history"].append(row)
        elif kind == "alert":
            run["alerts"].append((record.alert.title, record.alert.text))
        elif kind == "preempting":
            run["preempting"] = True
    return run


def _records(log: Path) -> list:
    """The whole records so far: a record still being written ends the list."""
    records = []
    for payload in _payloads(log.read_bytes()):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError:
            break
        records.append(record)
    return records


def offline_runs(out: Path) -> list[Path]:
    return sorted((Path(out) / "wandb").glob("offline-run-*"))
