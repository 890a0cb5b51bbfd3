"""The terminal matrix fits the terminal: blocks with the row labels repeated,
every cell read back whole, one line per client, `--p11-wide` one table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.clients import CLIENTS
from harness.commands.show import show_main
from harness.matrix.cases import cases
from harness.matrix.keys import parse_keys
from harness.matrix.record import HandshakeRecord
from harness.reports.files import load_results, write_results
from harness.reports.layout import matrix_tables
from harness.reports.terminal import client_summaries, terminal_cell, terminal_matrix

DATA = Path(__file__).parents[1] / "data" / "results"
Cell = tuple[str, str, str, str]  # key, provisioning, client, tls


def default_matrix() -> list[HandshakeRecord]:
    """Every case of the default matrix (all clients, a second JDK as on Debian
    12 with Temurin 25, rsa2048,p256,p384), with each kind of cell: passed,
    failed handshake, failed checks, expected failure, skip, unmeasured, not as
    predicted."""
    records = []
    clients = [*CLIENTS, "java@25", "java-nocombined@25"]
    for n, case in enumerate(cases(clients, parse_keys("rsa2048,p256,p384"))):
        mech = "CKM_RSA_PKCS_PSS" if case.key.name.startswith("rsa") else "CKM_ECDSA"
        record = HandshakeRecord(case.case_id, case.client, case.key.name,
                                 case.provisioning.value, case.tls.value, "ok",
                                 client_sigalgs=case.client_sigalgs, verdict="passed",
                                 sign={"mechanism": mech, "input_bytes": 32, "rv": "CKR_OK"})
        kind = n % 9
        if kind == 1:
            record.outcome, record.verdict, record.error = "fail", "failed", "CKR_GENERAL_ERROR"
            record.sign = {"mechanism": "CKM_ECDSA_SHA256", "input_bytes": 2150,
                           "rv": "CKR_GENERAL_ERROR"}
        elif kind == 2:
            record.outcome, record.verdict, record.sign = "skip", "skipped", None
        elif kind == 3:
            record.outcome, record.verdict = "fail", "xfailed"
            record.expected, record.error = "seed 001", "CKR_FUNCTION_NOT_SUPPORTED"
        elif kind == 4:
            record.verdict, record.problems = "failed", ["wrong mechanism"]
        elif kind == 5:
            record.unmeasured = ["not measured on this OpenSSL"]
        elif kind == 6:
            record.prediction_matched = False
            record.predicted = {"outcome": "fail", "mechanism": "CKM_ECDSA", "why": "x"}
        records.append(record)
    return records


def read_cells(text: str) -> dict[Cell, list[str]]:
    """Every cell of every block, read back by the column positions of the
    rule line under the headings; the client from the line above the TLS one."""
    lines = text.splitlines()
    found: dict[Cell, list[str]] = {}
    for i, rule in enumerate(lines):
        if not rule.startswith("-------"):
            continue
        spans = [m.span() for m in re.finditer(r"-+", rule)]
        names = [(m.start(), m.group()) for m in re.finditer(r"\S+", lines[i - 2])]
        tls_line = lines[i - 1]
        columns = []
        for n, (start, end) in enumerate(spans[2:], 2):
            client = [name for pos, name in names if pos <= start][-1]
            tls = tls_line[start:end].strip().removeprefix("TLS")
            last = n == len(spans) - 1
            columns.append((client, tls, start, None if last else spans[n + 1][0]))
        for row in lines[i + 1:]:
            if not row.strip():
                break
            key = row[spans[0][0]:spans[0][1]].strip()
            prov = row[spans[1][0]:spans[1][1]].strip()
            for client, tls, start, stop in columns:
                found.setdefault((key, prov, client, tls), []).append(row[start:stop].strip())
    return found


def expected_cells(records: list[HandshakeRecord]) -> dict[Cell, list[str]]:
    table, = matrix_tables(records)
    return {(key, prov.replace("server forces ", "forces "), client, tls):
            [terminal_cell(table.cases((key, prov), (client, tls)))]
            for key, prov in table.rows for client, tls in table.columns}


@pytest.mark.parametrize("width", [100, 80, 132])
def test_the_default_matrix_fits_and_every_cell_reads_back(width):
    records = default_matrix()
    text = terminal_matrix(records, width)
    assert max(len(line) for line in text.splitlines()) <= width
    cells = read_cells(text)
    assert cells == expected_cells(records)  # each cell once, whole
    assert len([line for line in text.splitlines() if line.startswith("-------")]) > 1


def test_the_wide_table_is_one_block_wider_than_a_terminal():
    """Negative control: without a width the one table is read back too, and
    it does not fit 100 columns, so the blocks above are what makes it fit."""
    records = default_matrix()
    text = terminal_matrix(records, None)
    assert len([line for line in text.splitlines() if line.startswith("-------")]) == 1
    assert max(len(line) for line in text.splitlines()) > 100
    assert read_cells(text) == expected_cells(records)


def test_the_reader_catches_a_cut_cell():
    """The read-back would see a cell cut short or missing."""
    records = default_matrix()
    text = terminal_matrix(records, 100).replace("GENERAL_ERROR ECDSA_SHA256", "GENERAL_ERR", 1)
    assert read_cells(text) != expected_cells(records)


def test_cells_are_abbreviated_consistently():
    records = {r.case_id: r for r in default_matrix()}
    text = {case_id: terminal_cell([r]) for case_id, r in records.items()}
    assert set(text.values()) >= {"ok PSS 32B", "ok ECDSA 32B", "F GENERAL_ERROR ECDSA_SHA256 2150B",
                                  "s", "x FUNCTION_NOT_SUPPORTED ECDSA 32B", "? ECDSA 32B",
                                  "ok! ECDSA 32B", "F ECDSA 32B"} or text
    assert terminal_cell([]) == "-"


def test_one_line_per_client_names_its_failures():
    records = [r for r in default_matrix() if r.client == "java"]
    line, = client_summaries(records)
    assert re.fullmatch(r"java: \d+ ok, \d+ failed, \d+ expected to fail, \d+ skipped "
                        r"\((\d× )?CKR_GENERAL_ERROR, ECDSA_SHA256 2\.1 KB; (\d× )?checks failed, "
                        r"ECDSA 32 B\)", line), line
    ok = [r for r in records if r.verdict == "passed"]
    assert client_summaries(ok) == [f"java: {len(ok)} ok"]  # control: nothing failed


def test_every_output_line_fits_with_long_notes():
    records = default_matrix()
    records[1].problems = ["a problem " * 40]
    text = terminal_matrix(records, 60)
    assert max(len(line) for line in text.splitlines()) <= 60
    assert "a problem a problem" in text


@pytest.mark.parametrize("columns,wide,limit", [("100", False, 100), ("100", True, None)])
def test_show_fits_columns_unless_wide(tmp_path, capsys, monkeypatch, columns, wide, limit):
    monkeypatch.setenv("COLUMNS", columns)
    results = tmp_path / "results.json"
    write_results(default_matrix(), results)
    assert show_main([str(results), *(["--wide"] if wide else [])]) == 1  # a case failed
    out = capsys.readouterr().out
    longest = max(len(line) for line in out.splitlines())
    assert longest <= 100 if limit else longest > 100
    assert read_cells(out) == expected_cells(default_matrix())


def test_show_of_a_real_run_fits(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    show_main([str(DATA / "softhsm-real.json")])
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    records = load_results(DATA / "softhsm-real.json")
    assert read_cells(out) == expected_cells(records)


def test_p11_wide_is_an_option_an_ini_key_and_an_environment_variable(tmp_path):
    from harness.run.config import resolve

    base = {"p11_reports": str(tmp_path)}
    assert resolve(base, {}, {}).wide is False  # control: fitted by default
    assert resolve({**base, "p11_wide": "yes"}, {}, {}).wide is True
    assert resolve(base, {"p11_wide": "true"}, {}).wide is True
    assert resolve(base, {}, {"P11TLS_WIDE": "1"}).wide is True
