"""The one reader of the interposer's record file (harness.interposer.calls.parse_records),
as the runner, `p11tls calls` and `p11tls explain` use it: torn lines and
seq gaps are reported, not silently dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.explain.explanation import parse_log
from harness.interposer.calls import load_calls, parse_calls, parse_records


def _line(fn: str, seq: int, pid: int = 7, rv: str = "CKR_OK") -> str:
    return json.dumps({"fn": fn, "seq": seq, "pid": pid, "tid": 1, "rv": rv, "us": 3})


GOOD = [_line("C_Initialize", 1), _line("C_OpenSession", 2), _line("C_Login", 3),
        _line("C_SignInit", 4), _line("C_Sign", 5)]


def test_clean_record_has_no_problems() -> None:
    read = parse_records("\n".join(GOOD) + "\n")
    assert [c.fn for c in read] == ["C_Initialize", "C_OpenSession", "C_Login", "C_SignInit",
                                    "C_Sign"]
    assert read.problems == []


def test_torn_last_line_is_reported_and_the_rest_kept() -> None:
    text = "\n".join(GOOD) + "\n" + _line("C_Finalize", 6)[:20]
    read = parse_records(text)
    assert len(read) == 5
    assert read.problems == ["line 6 is torn (not JSON; the last line, cut off mid-write)"]


def test_seq_gap_is_reported_per_process() -> None:
    lines = [GOOD[0], GOOD[1], GOOD[3], GOOD[4], _line("C_Initialize", 1, pid=8)]
    read = parse_records("\n".join(lines))
    assert read.problems == ["pid 7: 1 call record(s) missing (seq 3)"]
    # A piece cut from a longer record starts wherever the case started: no gap.
    assert parse_records("\n".join(GOOD[2:])).problems == []


def test_all_three_users_read_the_same_calls(tmp_path: Path) -> None:
    text = "\n".join(GOOD[:3] + ["{torn", *GOOD[3:]]) + "\n"
    path = tmp_path / "calls.jsonl"
    path.write_text(text)
    runner = [c["fn"] for c in parse_calls(text.encode())]
    calls = load_calls(path)
    explained = parse_log(text.splitlines())
    assert runner == [c.fn for c in calls] == [c.fn for c in explained.calls]
    assert calls.problems == ["line 4 is torn (not JSON)"]
    assert explained.problems == ("line 4 is torn (not JSON)",)


def test_load_calls_refuses_a_file_that_is_no_record(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" + "\n".join(GOOD))
    with pytest.raises(ConfigError, match="line 1 is not JSON"):
        load_calls(path)
