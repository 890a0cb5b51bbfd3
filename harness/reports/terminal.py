"""The terminal matrix printed at the end of every run (and by `p11tls show`):
one table per module/profile, rows key × provisioning, columns client × TLS
version; the cells are the same as in matrix.html and matrix.md
(matrix_layout.cell_text), the verdicts pytest's. First the causes of the
run's failures (each once, its cases, the workaround). Under each table: the
counts, the problems of every failed case and, once per distinct note, the
facts not measured on the versions here."""

from __future__ import annotations

from collections.abc import Sequence

from harness.reports.causes import causes_text, failure_causes
from harness.reports.layout import case_notes, cell_state, cell_text, matrix_tables
from harness.matrix.record import HandshakeRecord

_SUFFIX = {"known": " (known)", "unmeasured": " (unmeasured)"}


def terminal_cell(records: Sequence[HandshakeRecord]) -> str:
    """`ok ECDSA 32B`, `CKR_GENERAL_ERROR ECDSA_SHA256 3037B (known)`,
    `failed RSA_PKCS 51B`, `ok ECDSA 32B (unmeasured)`, `-` for none."""
    return " / ".join(cell_text(r) + _SUFFIX.get(cell_state(r), "") for r in records) or "-"


def table_notes(records: Sequence[HandshakeRecord]) -> list[str]:
    """`FAILED case: problem` per failed case; each unmeasured note once, with
    how many cases it concerns."""
    lines: list[str] = []
    unmeasured: dict[str, int] = {}
    for record in records:
        state = cell_state(record)
        if state == "fail":
            lines.append(f"FAILED {record.case_id}: {'; '.join(case_notes(record))}")
        for note in record.unmeasured or ():
            if state != "fail":
                unmeasured[str(note)] = unmeasured.get(str(note), 0) + 1
    for note, count in unmeasured.items():
        lines.append(f"{count} case{'' if count == 1 else 's'} {note}")
    return lines


def terminal_matrix(records: Sequence[HandshakeRecord]) -> str:
    """Plain-text tables with a count line and the notes under each."""
    if not records:
        return "no handshake cases were run"
    blocks = []
    for table in matrix_tables(records):
        header = ["key", "provisioning"] + [f"{c} TLS{t}" for c, t in table.columns]
        rows = [header] + [
            [key, label] + [terminal_cell(table.cases((key, label), col)) for col in table.columns]
            for key, label in table.rows
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        blocks.append("\n".join([table.title, *lines, table.counts(),
                                 *table_notes(table.records)]))
    causes = failure_causes(records)
    if causes:
        blocks.insert(0, "\n".join(["Causes of the failures:", *causes_text(causes)]))
    return "\n\n".join(blocks)
