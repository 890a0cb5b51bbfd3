"""The terminal matrix printed at the end of every run: one table per
module/profile, rows key × provisioning, columns client × TLS version; the
cells are the same as in matrix.html and matrix.md (markdown_report.cell_text)."""

from __future__ import annotations

from collections.abc import Sequence

from harness.markdown_report import cell_state, cell_text, matrix_tables
from harness.record import HandshakeRecord


def terminal_cell(records: Sequence[HandshakeRecord]) -> str:
    """`ok ECDSA 32B`, `CKR_GENERAL_ERROR ECDSA_SHA256 3037B (known)`, `-` for none."""
    texts = []
    for record in records:
        text = cell_text(record)
        state = cell_state(record)
        if state == "known":
            text += " (known)"
        elif state == "xpass":
            text += " (expected to fail)"
        texts.append(text)
    return " / ".join(texts) or "-"


def terminal_matrix(records: Sequence[HandshakeRecord]) -> str:
    """Plain-text tables with a count line under each."""
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
        blocks.append("\n".join([table.title, *lines, table.counts()]))
    return "\n\n".join(blocks)
