"""Read an offline W&B run back from its own .wandb file: the records wandb-core wrote, parsed
with wandb's protobuf classes (its LevelDB-log framing: 32 KiB blocks of CRC + length + type)."""
import json
import struct
from pathlib import Path

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


def read_run(run_dir: Path) -> dict:
    """{"run_id", "name", "config": {...}, "history": [{key: value, ...}], "alerts": [(title, text)],
    "preempting": marked as preempted}."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    run = {"run_id": None, "name": None, "config": {}, "history": [], "alerts": [], "preempting": False}
    for payload in _payloads(log.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
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


def offline_runs(out: Path) -> list[Path]:
    return sorted((Path(out) / "wandb").glob("offline-run-*"))
