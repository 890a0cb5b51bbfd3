"""reports/matrix.html: one self-contained page (inline CSS, no scripts, no
network) with one table per host/module/profile. Each cell is a <details>
element: its summary is the cell text, opening it shows the case — outcome,
error, the signing call, the PKCS#11 calls, the tails of the client and server
logs and, when the record has one, an explanation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from harness.reports.causes import Cause, failure_causes
from harness.explain.masking import mask_secrets
from harness.reports.layout import (
    MatrixTable,
    case_notes,
    cell_state,
    cell_text,
    emulation_label,
    environment,
    matrix_tables,
    sign_summary,
    worst_state,
)
from harness.matrix.record import HandshakeRecord, problems_of, verdict_of

__all__ = ["render_html"]

LOG_TAIL_LINES = 60
LOG_TAIL_BYTES = 8 * 1024
MAX_CALLS = 200
MAX_FIELD_CHARS = 4000  # a Java stack trace as the error must not swamp the page
LOG_ORDER = ("client", "server")

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h2 { margin-top: 2em; font-size: 1.2em; }
ul.env { margin: .3em 0 .8em; padding-left: 1.2em; }
ul.toc { padding-left: 1.2em; }
/* a matrix wider than the window scrolls in its own box, not the page: an opened
   case's panel is placed against the page and stays in view */
div.scroll { overflow-x: auto; padding-bottom: 2px; }
/* separate borders: collapsed ones would stay behind when the row labels stick */
table.matrix { border-collapse: separate; border-spacing: 0; font-size: 11px;
  border-top: 1px solid #bbb; }
table.matrix > * > tr > th, table.matrix > * > tr > td { border: solid #bbb;
  border-width: 0 1px 1px 0; padding: 2px 3px; vertical-align: top; text-align: left; }
/* narrow cells, a column per client: 14 clients (the default with a second JDK) fit
   1400 px, more scroll in their box; names break after _ , client names after - or @ */
table.matrix > tbody td { width: 6.6em; max-width: 6.6em; overflow-wrap: anywhere; }
table.matrix > thead th { background: #eee; white-space: nowrap; }
table.matrix > thead th.client { text-align: center; white-space: normal;
  overflow-wrap: anywhere; max-width: 6.6em; }
/* the row labels stay in view while the matrix scrolls sideways */
table.matrix th.key, table.matrix th.label, table.matrix th.tls { position: sticky;
  z-index: 1; background: #fff; box-sizing: border-box; overflow-wrap: anywhere; }
table.matrix > thead th.key, table.matrix > thead th.label,
table.matrix > thead th.tls { background: #eee; }
table.matrix th.key { left: 0; width: 5.5em; min-width: 5.5em; max-width: 5.5em;
  border-left-width: 1px; }
table.matrix th.label { left: 5.5em; width: 7em; min-width: 7em; max-width: 7em; }
table.matrix th.tls { left: 12.5em; width: 2.6em; min-width: 2.6em; max-width: 2.6em; }
/* a cell: the outcome, below it the signing call (mechanism, bytes signed) */
.matrix summary { white-space: normal; }
p.hide label { margin-right: .6em; white-space: nowrap; }
section.causes details, section.expected details { display: inline; margin-left: .5em; }
section.causes details > summary, section.expected details > summary { display: inline;
  cursor: pointer; color: #555; }
.matrix summary .gap { white-space: normal; }
.matrix .sign { display: block; }
td.ok { background: #dff0d8; }
td.fail { background: #f2a7a7; font-weight: bold; }
td.known { background: #ffd98a; }
td.unmeasured { background: #c7d7f5; }
td.skip { background: #f4f4f4; color: #777; }
td.empty { color: #aaa; }
details.case > summary { cursor: pointer; }
details.case[open] > summary { text-decoration: underline; }
/* the opened case floats over the page below its cell instead of widening the table */
details.case > .panel { position: absolute; left: 1.5em; right: 1.5em; z-index: 2;
  max-height: 75vh; overflow: auto; background: #fff; border: 2px solid #555;
  padding: .5em 1em; box-shadow: 0 4px 16px rgba(0,0,0,.3); white-space: normal;
  font-weight: normal; color: #222; }
.panel dl { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; }
.panel dt { font-weight: bold; }
.panel dd { margin: 0; overflow-wrap: anywhere; }
.panel pre { background: #f6f6f6; padding: .5em; overflow-x: auto; white-space: pre-wrap;
  word-break: break-all; max-height: 30em; }
table.calls { border-collapse: collapse; font: 12px monospace; }
table.calls th, table.calls td { border: 1px solid #ccc; padding: 1px 4px;
  text-align: left; vertical-align: top; }
table.calls thead th { background: #eee; }
table.calls td:nth-child(-n+7) { white-space: nowrap; }
table.calls td:last-child { overflow-wrap: anywhere; }
table.calls tr.bad td { background: #f2a7a7; }
.legend span { padding: 1px 6px; margin-right: .5em; border: 1px solid #bbb; }
"""


def render_html(records: Sequence[HandshakeRecord], *, log_base: Path | None = None) -> str:
    """The whole reports/matrix.html.

    Log paths in `record.logs` that are relative are read from `log_base`
    (the reports directory); logs that do not exist here (a merged run from
    another host) are named, not shown.
    """
    body = ["<h1>PKCS#11 TLS client-authentication matrix</h1>"]
    if not records:
        body.append("<p>No handshake cases were run.</p>")
    else:
        body.append(
            '<p class="legend">'
            '<span style="background:#dff0d8">ok</span>'
            '<span style="background:#f2a7a7">failed</span>'
            '<span style="background:#ffd98a">expected failure</span>'
            '<span style="background:#c7d7f5">unmeasured on this version</span>'
            '<span style="background:#f4f4f4">skipped</span>'
            '<span style="color:#aaa">-</span>no such case.'
            " Click a cell for the case's calls and logs.</p>")
        tables = matrix_tables(records)
        anchors = {r.case_id: f"g{number}-{_slug(r.case_id)}"
                   for number, table in enumerate(tables, 1) for r in table.records}
        if len(tables) > 1:  # say up front which table holds the failures
            body.append('<ul class="toc">')
            body += [f'<li><a href="#group-{number}">{escape(table.title)}</a>: '
                     f"{escape(table.counts())}</li>"
                     for number, table in enumerate(tables, 1)]
            body.append("</ul>")
        for number, table in enumerate(tables, 1):
            body.append(_table(table, number, log_base))
        body.append(_causes(failure_causes(records), anchors, records))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>PKCS#11 TLS client-authentication matrix</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")


def _causes(causes: Sequence[Cause], anchors: dict[str, str],
            records: Sequence[HandshakeRecord]) -> str:
    """After the tables, the causes as a compact list: the cause, how many
    cases, the workaround, the cases (links to their cells) behind a
    disclosure; the expected failures in a list of their own."""
    verdicts = {r.case_id: verdict_of(r) for r in records}

    def expected(cause: Cause) -> bool:
        return bool(getattr(cause, "expected", False)) or all(
            verdicts.get(c) == "xfailed" for c in cause.cases)

    out = []
    for title, chosen in (("Causes of the failures", [c for c in causes if not expected(c)]),
                          ("Expected failures", [c for c in causes if expected(c)])):
        if not chosen:
            continue
        items = []
        for cause in chosen:
            count = len(cause.cases)
            cases = ", ".join(f'<a href="#{escape(anchors[c])}">{escape(c)}</a>'
                              if c in anchors else escape(c) for c in cause.cases)
            text = f"<b>{escape(cause.title)}</b>: {count} case{'' if count == 1 else 's'}"
            if cause.workaround:
                text += f" — <i>workaround:</i> {escape(_cap(cause.workaround, 1000))}"
            example = (f"<br>{escape(_cap(cause.example, 300))}"
                       if cause.example and cause.example != cause.title else "")
            items.append(f"<li>{text}<details><summary>the cases</summary>{cases}{example}"
                         "</details></li>")
        kind = "causes" if title.startswith("Causes") else "expected"
        out.append(f'<section class="{kind}"><h2>{title}</h2><ol>' + "".join(items)
                   + "</ol></section>")
    return "\n".join(out)


def _table(table: MatrixTable, number: int, log_base: Path | None) -> str:
    out = [f'<section class="group" id="group-{number}">', f"<h2>{escape(table.title)}</h2>",
           '<ul class="env">']
    out += [f"<li><b>{escape(label)}:</b> {escape(text)}</li>"
            for label, text in environment(table)]
    # a column per client, the TLS version a row of its own: the default matrix
    # (14 clients) fits 1400 px, where a column per client x version did not
    clients, versions = table.clients, table.versions
    column_of = {client: f"g{number}c{n}" for n, client in enumerate(clients)}
    # a checkbox per client hides its column (CSS :has, no script)
    out.append("</ul>")
    out.append('<p class="hide">Hide: ' + " ".join(
        f'<label><input type="checkbox" id="hide-{column_of[c]}">{escape(c)}</label>'
        for c in clients) + "</p><style>" + "".join(
        f"body:has(#hide-{k}:checked) .{k} {{ display: none; }}" for k in column_of.values())
        + "</style>")
    out += ['<div class="scroll"><table class="matrix">',
            '<thead><tr><th class="key">key</th>', '<th class="label">provisioning</th>',
            '<th class="tls">TLS</th>']
    out += [f'<th class="client {column_of[client]}">{escape(client)}</th>'
            for client in clients]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(table.rows):
        for j, tls in enumerate(versions):
            out.append("<tr>")
            # the key once for its consecutive rows (rsa2048: generate, import, ...)
            if j == 0 and (i == 0 or table.rows[i - 1][0] != row[0]):
                span = next((n for n, r in enumerate(table.rows[i:]) if r[0] != row[0]),
                            len(table.rows) - i) * len(versions)
                rowspan = f' rowspan="{span}"' if span > 1 else ""
                out.append(f'<th class="key"{rowspan}>{escape(row[0])}</th>')
            if j == 0:
                rowspan = f' rowspan="{len(versions)}"' if len(versions) > 1 else ""
                out.append(f'<th class="label"{rowspan}>{escape(row[1])}</th>')
            out.append(f'<th class="tls">{escape(tls)}</th>')
            for client in clients:
                cases = table.cases(row, (client, tls))
                group = column_of[client]
                if not cases:
                    out.append(f'<td class="empty {group}">-</td>')
                    continue
                out.append(f'<td class="{worst_state(cases)} {group}">')
                for r in cases:
                    out.append(_case(r, f"g{number}-{_slug(r.case_id)}", len(cases) > 1,
                                     log_base))
                out.append("</td>")
            out.append("</tr>")
    out += ["</tbody></table></div>", "</section>"]
    return "\n".join(out)


def _case(record: HandshakeRecord, anchor: str, prefix: bool, log_base: Path | None) -> str:
    # `CKR_GENERAL_ERROR (known)` and, on a line of its own, `ECDSA_SHA256 3037B`:
    # a column is as wide as the signing call, not as both
    outcome, _, sign = cell_text(record).partition(" ")
    state = cell_state(record)
    words = [escape(outcome).replace("_", "_<wbr>")]  # CKR_FUNCTION_<wbr>NOT_<wbr>SUPPORTED
    if prefix:
        words.insert(0, f"{escape(record.case_id)}:")
    if state == "known":
        words.append("(known)")
    elif state == "unmeasured":
        words.append("(unmeasured)")
    # the summary does not wrap (the marker stays with the outcome), but may
    # break at these spaces
    text = '<span class="gap"> </span>'.join(words)
    if sign:
        text += f' <span class="sign">{escape(sign).replace("_", "_<wbr>")}</span>'
    hover = ""
    if state in ("fail", "known", "unmeasured"):
        label = {"fail": "failed", "known": "expected failure", "unmeasured": "unmeasured"}[state]
        hover = f' title="{label}: {escape(_cap("; ".join(case_notes(record)), 300))}"'
    elif state == "skip" and record.error:
        hover = f' title="skipped: {escape(_cap(record.error, 300))}"'
    return (f'<details class="case {state}" id="{escape(anchor)}" '
            f'data-case="{escape(record.case_id)}" data-state="{state}">'
            f"<summary{hover}>{text}</summary>"
            f'<div class="panel">{_panel(record, log_base)}</div></details>')


def _panel(record: HandshakeRecord, log_base: Path | None) -> str:
    module = record.module if isinstance(record.module, dict) else {}
    facts: list[tuple[str, Any]] = [
        ("case", record.case_id),
        ("verdict", verdict_of(record)),
        ("problems", "; ".join(str(p) for p in record.problems or ())
         or (None if record.outcome != "ok" else "; ".join(problems_of(record)))),
        ("outcome", record.outcome),
        ("expected failure", record.expected),
        ("unmeasured", "; ".join(str(n) for n in record.unmeasured or ())),
        ("versions", ", ".join(f"{k} {v or 'not detected'}"
                               for k, v in (record.versions or {}).items())),
        ("skipped because" if record.outcome == "skip" else "error", record.error),
        ("client", " ".join(str(v) for v in (record.client, record.client_version) if v)),
        ("TLS", f"{record.tls} requested"
         + (f", {record.negotiated_version} negotiated" if record.negotiated_version else "")),
        ("cipher", record.cipher),
        ("signature scheme", record.signature_scheme),
        ("signing call", sign_summary(record)),
        ("client certificate", record.client_subject),
        ("duration", f"{record.duration_s:.3f} s"
         if isinstance(record.duration_s, (int, float)) else None),
        ("module", module.get("path")),
        ("profile", emulation_label(record.profile, [record]) if record.profile else None),
    ]
    out = ["<dl>"]
    out += [f"<dt>{escape(k)}</dt><dd>{escape(_cap(str(v)))}</dd>" for k, v in facts if v]
    out.append("</dl>")
    out.append(_explanation(getattr(record, "explanation", None)))
    out.append(_calls(record.calls))
    logs = record.logs if isinstance(record.logs, dict) else {}
    names = [n for n in LOG_ORDER if n in logs] + sorted(n for n in logs if n not in LOG_ORDER)
    for name in names:
        if name == "calls" and record.calls:  # the calls table above is this log
            out.append(f"<p>calls log: {escape(str(logs[name]))}</p>")
            continue
        out.append(_log(str(name), str(logs[name]), log_base))
    return "\n".join(out)


def _explanation(explanation: Any) -> str:
    """A text, or `p11tls explain --json` output (its findings as a list)."""
    if not explanation:
        return ""
    if isinstance(explanation, str):
        return f"<h4>Explanation</h4><pre>{escape(_cap(explanation))}</pre>"
    findings = explanation.get("findings") if isinstance(explanation, dict) else None
    if isinstance(findings, list) and all(isinstance(f, dict) for f in findings):
        items = []
        for f in findings:
            text = f"{f.get('rule', '')}: {f.get('summary', '')}"
            hint = f"<br><i>{escape(str(f['hint']))}</i>" if f.get("hint") else ""
            items.append(f"<li>{escape(text)}{hint}</li>")
        return "<h4>Explanation</h4><ul>" + "".join(items) + "</ul>"
    return f"<h4>Explanation</h4><pre>{escape(_cap(json.dumps(explanation, indent=2)))}</pre>"


def _calls(calls: Any) -> str:
    if not calls:
        return "<p>No PKCS#11 calls were recorded for this case.</p>"
    calls = [c for c in calls if isinstance(c, dict)]
    head = "".join(f"<th>{h}</th>" for h in ("#", "function", "mechanism", "in", "out", "rv",
                                             "µs", "details"))
    out = [f"<h4>PKCS#11 calls ({len(calls)})</h4>",
           f'<table class="calls"><thead><tr>{head}</tr></thead><tbody>']
    for i, call in enumerate(calls[:MAX_CALLS], 1):
        rv = call.get("rv")
        bad = ' class="bad"' if rv not in (None, "CKR_OK") else ""
        cells = [i, call.get("fn"), _call_mechanism(call), call.get("in_len"),
                 call.get("out_len"), rv, call.get("us"), _call_details(call)]
        out.append(f"<tr{bad}>" + "".join(
            f"<td>{escape(_cap('' if v is None else str(v), 500))}</td>" for v in cells) + "</tr>")
    out.append("</tbody></table>")
    if len(calls) > MAX_CALLS:
        out.append(f"<p>… {len(calls) - MAX_CALLS} more calls not shown.</p>")
    return "\n".join(out)


_CALL_COLUMNS = {"fn", "mechanism", "params", "in_len", "out_len", "rv", "us"}
# bookkeeping of the interposer's record, not of the call
_CALL_NOISE = {"seq", "pid", "tid", "ts"}


def _call_mechanism(call: dict[str, Any]) -> str:
    """`CKM_RSA_PKCS_PSS (hash=CKM_SHA256, mgf=CKG_MGF1_SHA256, salt_len=32)`."""
    mechanism = call.get("mechanism")
    params = call.get("params")
    if isinstance(mechanism, dict):
        # "value" is the numeric CKM_ code; other keys are parameters
        params = params or {k: v for k, v in mechanism.items() if k not in ("name", "value")}
        mechanism = mechanism.get("name") or mechanism.get("value")
    if not mechanism:
        return ""
    return f"{mechanism} {_compact(params)}" if params else str(mechanism)


def _call_details(call: dict[str, Any]) -> str:
    parts = []
    for name, value in call.items():
        if name in _CALL_COLUMNS or name in _CALL_NOISE or value is None:
            continue
        if name == "key" and isinstance(value, dict):
            what = " ".join(str(value[k]) for k in ("key_type", "label") if value.get(k))
            parts.append(f"key {what or _compact(value)}")
        elif name == "template" and isinstance(value, list):
            types = [str(a.get("type")) if isinstance(a, dict) else str(a) for a in value]
            parts.append(f"template [{', '.join(types)}]")
        else:
            parts.append(f"{name}={_compact(value)}")
    return "; ".join(parts)


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}={_compact(v)}" for k, v in value.items()) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _log(name: str, path_text: str, log_base: Path | None) -> str:
    path = Path(path_text)
    if not path.is_absolute() and log_base is not None:
        path = log_base / path
    title = f"{name} log: {path_text}"
    try:
        tail, cut = log_tail(path)
    except OSError:
        return f"<h4>{escape(title)}</h4><p>(not available on this machine)</p>"
    if cut:
        title += f" (last {LOG_TAIL_LINES} lines at most)"
    return f"<h4>{escape(title)}</h4><pre>{escape(tail)}</pre>"




def log_tail(path: Path) -> tuple[str, bool]:
    """The last lines of a log, printable and with PINs and key values masked.

    Returns (text, cut). Raises OSError when the file cannot be read.
    """
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - LOG_TAIL_BYTES))
        data = handle.read()
    lines = data.decode("utf-8", errors="replace").splitlines()
    cut = size > LOG_TAIL_BYTES or len(lines) > LOG_TAIL_LINES
    if size > LOG_TAIL_BYTES and lines:
        lines = lines[1:]  # the first line is probably cut in the middle
    # a tail that starts inside a hex dump may start inside a PIN's
    return "\n".join(mask_secrets(lines[-LOG_TAIL_LINES:], in_dump=cut)), cut


def _cap(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f" … ({len(text) - limit} more characters)"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)
