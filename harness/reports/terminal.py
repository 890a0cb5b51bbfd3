"""The terminal matrix printed at the end of every run (and by `p11tls show`).

One table per module/profile, rows key × provisioning, columns client × TLS
version, the verdicts pytest's. It fits the terminal: the columns that do
not fit go to a further block with the row labels repeated, cells are
abbreviated the same way everywhere (the legend under the table says how),
and one line per client says what it did, so a failure is found without
reading the grid. `width=None` gives the single table, however wide.

First the causes of the run's failures (each once, its cases, the
workaround). Under each table: the counts, the problems of every failed
case and, once per distinct note, the facts not measured here.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from harness.matrix.record import HandshakeRecord, verdict_of
from harness.reports.causes import causes_text, failure_causes
from harness.reports.layout import (
    Heading,
    MatrixTable,
    case_notes,
    cell_state,
    cell_text,
    failure_code,
    mechanism_name,
    matrix_tables,
)

__all__ = ["LEGEND", "client_summaries", "fit_lines", "terminal_cell", "terminal_matrix"]

DEFAULT_WIDTH = 80  # not a terminal (a pipe to a CI log): the classic width
GAP = "  "
# the cell's first word: pytest's verdict, or why there is no verdict on a fact
MARKS = {"ok": "ok", "fail": "F", "known": "x", "skip": "s", "unmeasured": "?"}
# the two mechanisms in most cells, shortened (the legend says so)
SHORT_MECHANISMS = {"RSA_PKCS_PSS": "PSS", "RSA_PKCS": "PKCS1"}
LEGEND = ("ok passed, F failed, x expected failure, s skipped, ? unmeasured on this "
          "version, ! not as predicted, - not run; then the return code without CKR_, the "
          "mechanism of the CertificateVerify signature without CKM_ (PSS = RSA_PKCS_PSS, "
          "PKCS1 = RSA_PKCS) and the bytes it signed; 'forces S': the server allowed only "
          "signature scheme S")


def terminal_cell(records: Sequence[HandshakeRecord]) -> str:
    """`ok ECDSA 32B`, `F GENERAL_ERROR ECDSA_SHA256 3037B`, `x TEMPLATE_INCONSISTENT`,
    `s`, `s no import`, `? ECDSA 32B`; `-` for no case; several cases with ` / `."""
    return " / ".join(_one_cell(r) for r in records) or "-"


def _one_cell(record: HandshakeRecord) -> str:
    mark = MARKS[cell_state(record)]
    text = cell_text(record)
    if text.endswith(" !=predicted"):
        text, mark = text.removesuffix(" !=predicted"), mark + "!"
    if text == "skip":
        return mark
    head, _, rest = text.partition(" ")
    if head in ("ok", "failed"):  # the handshake worked: the mark says the verdict
        text = rest
    words = [SHORT_MECHANISMS.get(w, w) for w in text.removeprefix("CKR_").split(" ")]
    return " ".join([mark, *words]).strip()


def _size(count: object) -> str:
    if not isinstance(count, int):
        return ""
    return f"{count} B" if count < 1024 else f"{count / 1024:.1f} KB"


def _failure(record: HandshakeRecord) -> str:
    """`CKR_GENERAL_ERROR, ECDSA_SHA256 2.1 KB`: what a failed case did."""
    sign = record.sign if isinstance(record.sign, dict) else {}
    signed = " ".join(p for p in (mechanism_name(sign.get("mechanism")) or "",
                                  _size(sign.get("input_bytes"))) if p)
    what = "checks failed" if record.outcome == "ok" else failure_code(record)
    return ", ".join(p for p in (what, signed) if p)


def client_summaries(records: Sequence[HandshakeRecord],
                     order: Sequence[str] = ()) -> list[str]:
    """`java: 10 ok, 1 failed (CKR_GENERAL_ERROR, ECDSA_SHA256 2.1 KB)`, one per
    client, in `order` (the table's columns) first."""
    by_client: dict[str, list[HandshakeRecord]] = {c: [] for c in order}
    for record in records:
        by_client.setdefault(record.client, []).append(record)
    words = {"passed": "ok", "failed": "failed", "xfailed": "expected to fail",
             "skipped": "skipped"}
    lines = []
    for client, cases in by_client.items():
        if not cases:
            continue
        verdicts = [verdict_of(r) for r in cases]
        counts = [f"{verdicts.count(v)} {w}" for v, w in words.items() if v in verdicts]
        failures: dict[str, int] = {}
        for r in cases:
            if verdict_of(r) == "failed":
                failures[_failure(r)] = failures.get(_failure(r), 0) + 1
        detail = "; ".join(f"{n}× {f}" if n > 1 else f for f, n in failures.items())
        lines.append(f"{client}: {', '.join(counts)}" + (f" ({detail})" if detail else ""))
    return lines


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


@dataclass(frozen=True)
class _Column:
    heading: Heading  # (client, tls)
    cells: tuple[str, ...]  # one per row
    width: int


def _row_label(row: Heading) -> tuple[str, str]:
    key, label = row
    return key, label.replace("server forces ", "forces ")


def _columns(table: MatrixTable) -> list[_Column]:
    columns = []
    for client, tls in table.columns:
        cells = tuple(terminal_cell(table.cases(row, (client, tls))) for row in table.rows)
        columns.append(_Column((client, tls), cells, max(len(f"TLS{tls}"), *map(len, cells))))
    return columns


def _groups(columns: list[_Column]) -> list[list[_Column]]:
    """The columns of one client together (TLS 1.2 next to 1.3)."""
    groups: list[list[_Column]] = []
    for column in columns:
        if groups and groups[-1][0].heading[0] == column.heading[0]:
            groups[-1].append(column)
        else:
            groups.append([column])
    return groups


def _group_width(group: list[_Column]) -> int:
    inner = sum(c.width for c in group) + len(GAP) * (len(group) - 1)
    return max(inner, len(group[0].heading[0]))


def _blocks(groups: list[list[_Column]], room: int | None) -> list[list[list[_Column]]]:
    """Client groups packed into blocks of at most `room` characters each
    (None: one block); a client wider than a block alone is split by column."""
    if room is None:
        return [groups]
    parts: list[list[_Column]] = []
    for group in groups:
        if len(GAP) + _group_width(group) <= room or len(group) == 1:
            parts.append(group)
        else:
            parts.extend([c] for c in group)
    blocks: list[list[list[_Column]]] = [[]]
    used = 0
    for part in parts:
        need = len(GAP) + _group_width(part)
        if blocks[-1] and used + need > room:
            blocks.append([])
            used = 0
        blocks[-1].append(part)
        used += need
    return blocks


def _label_widths(labels: list[tuple[str, str]]) -> tuple[int, int]:
    return (max(len("key"), *(len(k) for k, _ in labels)),
            max(len("provisioning"), *(len(p) for _, p in labels)))


def _render_block(labels: list[tuple[str, str]], block: list[list[_Column]]) -> list[str]:
    """Three heading lines (clients, TLS versions, a rule), then the rows."""
    key_w, prov_w = _label_widths(labels)
    clients = [" " * key_w, " " * prov_w]
    tls = ["key".ljust(key_w), "provisioning".ljust(prov_w)]
    rule = ["-" * key_w, "-" * prov_w]
    rows = [[k.ljust(key_w), p.ljust(prov_w)] for k, p in labels]
    for group in block:
        widths = [c.width for c in group]
        extra = _group_width(group) - (sum(widths) + len(GAP) * (len(group) - 1))
        widths[-1] += extra  # a client name wider than its columns widens the last
        clients.append(group[0].heading[0].ljust(_group_width(group)))
        for column, width in zip(group, widths):
            tls.append(f"TLS{column.heading[1]}".ljust(width))
            rule.append("-" * width)
            for row, cell in zip(rows, column.cells):
                row.append(cell.ljust(width))
    return [GAP.join(line).rstrip() for line in (clients, tls, rule, *rows)]


def _wrap(line: str, width: int | None) -> list[str]:
    """A long line wrapped at `width`, its continuation indented like it plus two."""
    if width is None or len(line) <= width:
        return [line]
    indent = " " * (len(line) - len(line.lstrip()))
    # a word longer than the line (a path) stays whole: it is copied, not read
    return textwrap.wrap(line, width, initial_indent="", subsequent_indent=indent + "  ",
                         break_long_words=False, break_on_hyphens=False) or [line]


def fit_lines(lines: Sequence[str], width: int | None) -> list[str]:
    """Lines wrapped at `width` (None: as they are)."""
    return [wrapped for line in lines for wrapped in _wrap(line, width)]


def _table_text(table: MatrixTable, width: int | None) -> list[str]:
    labels = [_row_label(row) for row in table.rows]
    key_w, prov_w = _label_widths(labels)
    room = None if width is None else max(width - key_w - len(GAP) - prov_w, 1)
    blocks = _blocks(_groups(_columns(table)), room)
    lines = [table.title]
    for n, block in enumerate(blocks):
        if n:
            lines.append("")
        lines += _render_block(labels, block)
    lines += ["", *client_summaries(table.records, table.clients), table.counts(),
              *table_notes(table.records)]
    return [wrapped for line in lines for wrapped in _wrap(line, width)]


def terminal_matrix(records: Sequence[HandshakeRecord], width: int | None = DEFAULT_WIDTH) -> str:
    """Plain-text tables, each with its legend, client lines, counts and notes;
    no line longer than `width` (but a cell, row label or word wider than
    the terminal alone, which is printed whole); `width=None`: one table."""
    if not records:
        return "no handshake cases were run"
    blocks = ["\n".join(_table_text(table, width)) for table in matrix_tables(records)]
    blocks.append("\n".join(_wrap(f"legend: {LEGEND}", width)))
    causes = failure_causes(records)
    if causes:
        lines = ["Causes of the failures:", *causes_text(causes)]
        blocks.insert(0, "\n".join(w for line in lines for w in _wrap(line, width)))
    return "\n\n".join(blocks)
