"""Calls recorded per case through the interposer, pkcs11-spy chained on
request, and the `p11tls calls` table (run in child pytest/CLI processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MATRIX_TEST = (Path(__file__).parents[1] / "test_matrix.py").read_text()
ONE_CASE = "openssl-engine and p256 and generate and tls12"
CASE_DIR = Path("reports/logs/openssl-engine-p256-generate-tls12")


@pytest.fixture
def matrix(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_matrix=MATRIX_TEST)
    return pytester


def test_each_case_keeps_its_calls_and_the_sign_summary(matrix):
    result = matrix.runpytest_subprocess("-k", ONE_CASE, timeout=120)
    result.assert_outcomes(passed=1)
    (record,) = json.loads((matrix.path / "reports/results.json").read_text())["cases"]
    assert record["sign"] == {"mechanism": "CKM_ECDSA", "params": None, "parts": 0,
                              "input_bytes": 32, "rv": "CKR_OK"}
    assert [c["fn"] for c in record["calls"]].count("C_Sign") >= 1
    lines = (matrix.path / CASE_DIR / "calls.jsonl").read_text().splitlines()
    assert len(lines) == len(record["calls"])
    assert not (matrix.path / CASE_DIR / "spy.log").exists()  # only with --p11-spy


def test_p11_spy_keeps_the_familiar_log_per_case_without_the_pin(matrix, pkcs11_spy,
                                                                 softhsm_store, monkeypatch):
    store, token = softhsm_store
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    result = matrix.runpytest_subprocess(
        "-k", ONE_CASE, "--p11-spy", f"--p11-module={store.module}",
        f"--p11-token-label={token.label}", f"--p11-pin={token.pin}", timeout=120)
    result.assert_outcomes(passed=1)
    spy = (matrix.path / CASE_DIR / "spy.log").read_text()
    assert "C_SignInit" in spy and "CKM_ECDSA" in spy and "C_Login" in spy
    pin_hex = " ".join(f"{b:02X}" for b in token.pin.encode())
    for path in (matrix.path / "reports").rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert token.pin not in text and pin_hex not in text, path
    # the raw log in the basetemp is masked too (in place), and private; the
    # control that pkcs11-spy itself writes the PIN is in test_plugin.py
    raw = next(p for p in matrix.path.rglob("spy-openssl-engine.log") if "reports" not in p.parts)
    assert "pPin[ulPinLen]" in raw.read_text() and pin_hex not in raw.read_text()
    assert raw.stat().st_mode & 0o777 == 0o600
    (record,) = json.loads((matrix.path / "reports/results.json").read_text())["cases"]
    assert record["sign"]["mechanism"] == "CKM_ECDSA"  # the interposer still records


def test_no_record_runs_the_module_directly(matrix):
    result = matrix.runpytest_subprocess("-k", ONE_CASE, "--p11-no-record", timeout=120)
    result.assert_outcomes(passed=1)
    (record,) = json.loads((matrix.path / "reports/results.json").read_text())["cases"]
    assert record["calls"] is None and record["sign"] is None
    assert not (matrix.path / CASE_DIR / "calls.jsonl").exists()


def test_calls_command_prints_a_table_and_refuses_other_files(matrix, tmp_path):
    matrix.runpytest_subprocess("-k", ONE_CASE, timeout=120).assert_outcomes(passed=1)
    calls = matrix.path / CASE_DIR / "calls.jsonl"
    table = subprocess.run([sys.executable, "-m", "harness.cli", "calls", str(calls)],
                           capture_output=True, text=True, check=False)
    assert table.returncode == 0
    assert "C_SignInit" in table.stdout and "CKM_ECDSA" in table.stdout
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    refused = subprocess.run([sys.executable, "-m", "harness.cli", "calls", str(bad)],
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr


def test_calls_command_keeps_a_record_cut_short_by_a_killed_client(tmp_path):
    whole = '{"fn":"C_Initialize","seq":1,"rv":"CKR_OK","us":5}\n'
    cut = tmp_path / "cut.jsonl"
    cut.write_text(whole + '{"fn":"C_Sign","seq":2,"rv":"CKR_O')
    table = subprocess.run([sys.executable, "-m", "harness.cli", "calls", str(cut)],
                           capture_output=True, text=True, check=False)
    assert table.returncode == 0 and "C_Initialize" in table.stdout
    # negative control: the same torn line in the middle is not a record file
    middle = tmp_path / "middle.jsonl"
    middle.write_text('{"fn":"C_Sign","seq":2,"rv":"CKR_O\n' + whole)
    refused = subprocess.run([sys.executable, "-m", "harness.cli", "calls", str(middle)],
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "line 1 is not JSON" in refused.stderr


IMPORT_CASE = "gnutls and p256 and import and tls13 and not generate"  # not the tmp dir's name
NO_IMPORT = ('name = "no-import"\n[create_object]\n'
             'refuse = [{ class = "CKO_PRIVATE_KEY", rv = "CKR_GENERAL_ERROR" }]\n')


@pytest.mark.parametrize("profile", [None, "no-import"])
def test_an_import_cell_shows_the_harness_c_create_object(matrix, tmp_path, profile):
    """The harness's own provisioning is recorded with or without a profile: an
    import cell says which C_CreateObject made its key and what it returned
    (the profile refuses private-key imports, the plain token takes them)."""
    extra = []
    if profile:
        (tmp_path / "no-import.toml").write_text(NO_IMPORT)
        extra = ["--p11-profile", str(tmp_path / "no-import.toml")]
    result = matrix.runpytest_subprocess(
        "-k", IMPORT_CASE, *extra, timeout=180)
    records = json.loads((matrix.path / "reports/results.json").read_text())["cases"]
    assert len(records) == 1, [r["case_id"] for r in records]
    (record,) = records
    creates = [c for c in record["provisioned"] if c["fn"] == "C_CreateObject"]
    assert creates, record["provisioned"]
    if profile is None:
        result.assert_outcomes(passed=1)
        assert {c["rv"] for c in creates} == {"CKR_OK"}
    else:  # the refused import: the refusal's code, and the calls kept in the record
        assert creates[-1]["rv"] == "CKR_GENERAL_ERROR", record["provisioned"]
        assert record["error"] == "provisioning: CKR_GENERAL_ERROR", record
        assert "C_CreateObject" in [c["fn"] for c in record["calls"]]


def test_no_record_records_no_provisioning_either(matrix):
    result = matrix.runpytest_subprocess("-k", IMPORT_CASE, "--p11-no-record", timeout=180)
    result.assert_outcomes(passed=1)
    (record,) = json.loads((matrix.path / "reports/results.json").read_text())["cases"]
    assert record["provisioned"] is None and record["calls"] is None
