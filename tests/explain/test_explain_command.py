"""`p11tls explain`: text and JSON output, bad input and command lines (one line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from explain_helpers import DATA, cli

# --- output --------------------------------------------------------------------------


def test_json_output_shape(capsys):
    rc, out, err = cli(capsys, str(DATA / "seed001-opensc.log"), "--json")
    assert rc == 0 and err == ""
    data = json.loads(out)
    assert set(data) == {"format", "calls", "first_failure", "findings", "problems", "next_steps"}
    assert data["format"] == "opensc-debug"
    assert data["calls"] == [
        {"fn": "C_SignInit", "mechanism": "CKM_ECDSA_SHA256", "input_bytes": None, "rv": "CKR_OK"},
        {
            "fn": "C_SignFinal",
            "mechanism": "CKM_ECDSA_SHA256",
            "input_bytes": 6039,
            "rv": "CKR_GENERAL_ERROR",
        },
    ]
    assert data["first_failure"] == 1
    assert all(set(f) == {"rule", "summary", "call", "hint", "harmless"} for f in data["findings"])
    assert data["findings"][0]["rule"] == "combined-mechanism-large-input"


def test_json_without_failure(capsys, spy_logs):
    rc, out, _ = cli(capsys, str(spy_logs["ecdsa_ok"]), "--json")
    data = json.loads(out)
    assert rc == 0 and data["first_failure"] is None and data["findings"] == []
    assert {"fn": "C_Sign", "mechanism": "CKM_ECDSA", "input_bytes": 32, "rv": "CKR_OK"} in data[
        "calls"
    ]
    # only the calls that matter: no slot/token/attribute chatter
    assert {c["fn"] for c in data["calls"]} <= {"C_Login", "C_SignInit", "C_Sign"}


def test_text_output(capsys):
    rc, out, _ = cli(capsys, str(DATA / "seed001-opensc.log"))
    assert rc == 0
    assert "First failing call: #1 C_SignFinal CKM_ECDSA_SHA256 -> CKR_GENERAL_ERROR" in out
    assert "[combined-mechanism-large-input] call #1" in out and "What to do:" in out
    assert "6039B" in out and "data(6039)" in out  # the table and the echoed log excerpt



# --- command line: bad input is one line on stderr, exit 2, no traceback ------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty", b"", "is empty"),
        ("blank", b"\n  \n\t\n", "is empty"),
        ("binary", b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 8, "binary file"),
        ("random-bytes", bytes((i * 7919) % 256 for i in range(4096)), "binary file"),
        (
            "garbage",
            b"lorem ipsum dolor sit amet\n" * 40 + b"[INFO] server started\n",
            "unknown log format",
        ),
        ("json-not-records", b'{"a": 1}\n{"b": 2}\n', "unknown log format"),
        ("opensc-lookalike", b"[main] x.c:1:f: hello\n" * 5, "unknown log format"),
    ],
)
def test_bad_input(capsys, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    rc, out, err = cli(capsys, str(path))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/nonexistent/dir/spy.log"], "no such file"),
        ([], "required"),
        (["a.log", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_command_line(capsys, argv, message):
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1 and message in err


def test_directory_is_one_line(capsys, tmp_path):
    rc, _, err = cli(capsys, str(tmp_path))
    assert rc == 2 and err.count("\n") == 1 and "is a directory" in err


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    garbage = tmp_path / "garbage.log"
    garbage.write_bytes(bytes((i * 31) % 256 for i in range(2048)))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys; from harness.commands.explain import explain_main; "
                "sys.exit(explain_main(sys.argv[1:]))"
            ),
            str(garbage),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_explain_reads_a_pasted_log_from_standard_input():
    log = (DATA / "seed001-opensc.log").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "explain", "-", "--json"],
                          input=log, capture_output=True, check=False)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["format"] == "opensc-debug"
    empty = subprocess.run([sys.executable, "-m", "harness.cli", "explain", "-"],
                           input=b"", capture_output=True, check=False)
    assert empty.returncode == 2 and b"is empty" in empty.stderr
