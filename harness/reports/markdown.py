"""reports/matrix.md: the matrix as GitHub-ready Markdown, one table per
host/module/profile, each with a short environment header, after the causes
of the run's failures. The table model is harness.reports.layout's (the HTML
report and the terminal summary show the same tables).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from harness.reports.causes import Cause, failure_causes
from harness.reports.layout import (
    MatrixTable,
    case_notes,
    cell_state,
    cell_text,
    environment,
    matrix_tables,
)
from harness.matrix.record import HandshakeRecord

__all__ = ["render_markdown"]

_EMPHASIS_UNDERSCORE = re.compile(r"(?<!\w)_|_(?!\w)")

_MARK = {"fail": "❌ ", "known": "⚠️ ", "unmeasured": "❔ ", "ok": "", "skip": ""}
LEGEND = ("❌ failed (the problems below the table) · ⚠️ expected failure (reason below "
          "the table) · ❔ unmeasured on this version: no fact measured on these versions, "
          "what the case saw · skip: not run here · -: no such case")


def render_markdown(records: Sequence[HandshakeRecord]) -> str:
    """The whole reports/matrix.md: a title, a legend and one section per table."""
    out = ["# PKCS#11 TLS client-authentication matrix", ""]
    if not records:
        out.append("No handshake cases were run.")
        return "\n".join(out) + "\n"
    out += _causes(failure_causes(records))
    out += [LEGEND, ""]
    for table in matrix_tables(records):
        out += _section(table)
    return "\n".join(out).rstrip("\n") + "\n"


def _causes(causes: Sequence[Cause]) -> list[str]:
    """`## Causes of the failures`: each cause once, its cases and the workaround."""
    if not causes:
        return []
    cases = sum(len(c.cases) for c in causes)
    out = [f"## Causes of the failures ({len(causes)} for {cases} failed "
           f"case{'' if cases == 1 else 's'})", ""]
    for n, cause in enumerate(causes, 1):
        out.append(f"{n}. **{_md(cause.title)}** — {len(cause.cases)} "
                   f"case{'' if len(cause.cases) == 1 else 's'}: "
                   + ", ".join(_md(c) for c in cause.cases))
        if cause.example and cause.example != cause.title:
            out.append(f"   - {_md(cause.example)}")
        if cause.workaround:
            out.append(f"   - Workaround: {_md(cause.workaround)}")
    out.append("")
    return out


def _section(table: MatrixTable) -> list[str]:
    out = [f"## {_md(table.title)}", ""]
    out += [f"- **{label}:** {_md(text)}" for label, text in environment(table)]
    out.append("")
    header = ["key", "provisioning"] + [f"{c} TLS{t}" for c, t in table.columns]
    out.append("| " + " | ".join(_md(h) for h in header) + " |")
    out.append("|" + "---|" * len(header))
    notes: list[str] = []
    for row in table.rows:
        cells = [_md(row[0]), _md(row[1])]
        for column in table.columns:
            cases = table.cases(row, column)
            shown = []
            for r in cases:
                text = _md(_MARK[cell_state(r)] + cell_text(r))
                if len(cases) > 1:
                    text = f"{_md(r.case_id)}: {text}"
                said = case_notes(r)
                if said:
                    notes.append(f"{r.case_id}: {'; '.join(said)}")
                    text += f" [{len(notes)}]"
                shown.append(text)
            cells.append("<br>".join(shown) or "-")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    if notes:
        out += [f"{i}. {_md(note)}" for i, note in enumerate(notes, 1)] + [""]
    return out


def _md(text: str) -> str:
    """One line of table-safe Markdown: no pipes, no raw HTML, no line breaks."""
    text = " ".join(str(text).split())
    for char in "\\|<>*`[]":
        text = text.replace(char, "\\" + char)
    # GitHub ignores intraword underscores (CKR_GENERAL_ERROR stays readable)
    return _EMPHASIS_UNDERSCORE.sub(r"\\_", text)
