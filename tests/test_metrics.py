"""train/report/metrics.py: metrics.jsonl is read whole before a resume rewinds it; only a last line
cut short by a crash is passed over, any other line that is no record is named."""
import json
from pathlib import Path

import pytest

from train.report.metrics import MetricsDamaged, MetricsFile, read_lines

RECORDS = [json.dumps({"step": step, "d_loss": -1.5}) for step in (5, 10, 15)]


def write(path: Path, *lines: bytes | str, end: bytes = b"\n") -> Path:
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + end)
    return path


def test_a_last_line_cut_short_by_a_crash_is_passed_over_and_the_rewind_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    path = write(tmp_path / "metrics.jsonl", *RECORDS, RECORDS[0][:9], end=b"")
    assert read_lines(path) == RECORDS
    MetricsFile(path, resume_step=10)
    assert path.read_text().splitlines() == RECORDS[:2]


@pytest.mark.parametrize("line, problem", [
    ('{"step": 5, "d_loss": -1.', "is not a JSON record (Expecting ',' delimiter, column 25)"),
    ('{"step": 5, "note": "unfinished', "is not a JSON record (Unterminated string starting, column 21)"),
    (b"\x00\x00\x00\x00", "is not a JSON record (Expecting value, column 1)"),  # a power loss's zeroed block
    (b"\xff\xfe", "is not text (not UTF-8)"),
    ('{"d_loss": -1.5}', "is not a JSON record with a step"),
    ("[5, -1.5]", "is not a JSON record with a step"),
])
def test_any_other_line_that_is_no_record_is_named_by_its_number(tmp_path, line, problem):
    path = write(tmp_path / "metrics.jsonl", RECORDS[0], line, *RECORDS[1:])
    before = path.read_bytes()
    with pytest.raises(MetricsDamaged) as damaged:
        MetricsFile(path, resume_step=10)
    assert str(damaged.value).startswith(f"{path} line 2 {problem}; repair or delete that line")
    assert path.read_bytes() == before
