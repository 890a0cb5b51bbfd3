"""The matrix's table model, shared by matrix.md, matrix.html and the
terminal summary: grouping into one table per host/module/profile, row and
column order, the text and state of one cell, the notes of a case and the
environment header of a table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.matrix.record import IMPORT_UNSUPPORTED, HandshakeRecord, problems_of, verdict_of
from harness.matrix.keys import KEYS

__all__ = [
    "FAILED",
    "GroupKey",
    "MatrixTable",
    "case_notes",
    "cell_state",
    "cell_text",
    "emulation_label",
    "environment",
    "failure_code",
    "first_cause",
    "group_key",
    "group_title",
    "matrix_tables",
    "mechanism_name",
    "prediction_notes",
    "sign_summary",
    "verdict_counts",
    "worst_state",
]

TLS_ORDER = ("1.2", "1.3")
# Column order, the software control last; clients not listed follow alphabetically
CLIENT_ORDER = ("openssl-engine", "openssl-provider", "gnutls", "nss", "curl", "java",
                "java-nocombined", "software")
PROVISIONING_ORDER = ("generate", "import")
FAILED = ("fail", "error")

# (host, module path, profile); "" where the record does not say
GroupKey = tuple[str, str, str]
# the heading of one row, (key, provisioning), or of one column, (client, tls)
Heading = tuple[str, str]

_CKR = re.compile(r"\bCKR_[A-Z0-9_]+\b")


# --- the layout shared with the HTML report ---------------------------------------


def group_key(record: HandshakeRecord) -> GroupKey:
    """Which table a record belongs to: one per host, module path and profile."""
    module = _module(record)
    return (_text(module.get("host")), _text(module.get("path")), _text(record.profile))


def mechanism_name(value: Any) -> str | None:
    """`CKM_ECDSA_SHA256` (or {"name": ...}) -> `ECDSA_SHA256`."""
    if isinstance(value, dict):
        value = value.get("name")
    if not value:
        return None
    name = str(value)
    return name.removeprefix("CKM_")


def _sign(record: HandshakeRecord) -> dict[str, Any]:
    return record.sign if isinstance(record.sign, dict) else {}


def failure_code(record: HandshakeRecord) -> str:
    """The CKR code a failed case ended with, else its outcome word."""
    rv = _sign(record).get("rv")
    if rv and rv != "CKR_OK":
        return str(rv)
    found = _CKR.search(record.error or "")
    if found:
        return found.group(0)
    for call in record.calls or ():
        if (isinstance(call, dict) and str(call.get("fn", "")).startswith("C_Sign")
                and call.get("rv") not in (None, "CKR_OK", "CKR_BUFFER_TOO_SMALL")):
            return str(call["rv"])
    return record.outcome or "fail"


def cell_text(record: HandshakeRecord) -> str:
    """`ok ECDSA 32B`, `CKR_GENERAL_ERROR ECDSA_SHA256 3037B`, `skip`, and
    `failed RSA_PKCS 51B` for a handshake that worked but failed its checks.

    The mechanism and input size come from the CertificateVerify signing call
    (`sign`); a record without one shows the signature scheme the server saw.
    """
    if verdict_of(record) == "skipped":
        return "no import" if (record.error or "").startswith(IMPORT_UNSUPPORTED) else "skip"
    if record.outcome == "ok":
        head = "failed" if verdict_of(record) == "failed" else "ok"
    else:
        head = failure_code(record)
        cause = first_cause(record)
        if head in FAILED and cause:
            head = f"{head}: {cause}"  # no signing call: say why instead of a bare "fail"
    sign = _sign(record)
    mechanism = mechanism_name(sign.get("mechanism"))
    if mechanism:
        size = sign.get("input_bytes")
        detail = f"{mechanism} {size}B" if isinstance(size, int) else mechanism
    else:
        detail = record.signature_scheme or ""
    mark = " !=predicted" if record.prediction_matched is False else ""
    return f"{head} {detail}".strip() + mark


def first_cause(record: HandshakeRecord) -> str | None:
    """The rule of the record's first real explanation finding (None without one)."""
    explanation = record.explanation if isinstance(record.explanation, dict) else {}
    findings = [f for f in explanation.get("findings") or () if isinstance(f, dict)]
    real = [f for f in findings if not f.get("harmless")] or findings
    return str(real[0].get("rule")) if real and real[0].get("rule") else None


def cell_state(record: HandshakeRecord) -> str:
    """The case's verdict as a cell: ok (passed), fail (failed), known
    (expected failure), unmeasured (passed or failed where no fact was
    measured on these versions: what it saw, not a verdict on a fact), skip."""
    verdict = verdict_of(record)
    if verdict == "skipped":
        return "skip"
    if verdict == "failed":
        return "fail"
    if record.unmeasured and not (verdict == "xfailed" and record.expected):
        return "unmeasured"
    return "known" if verdict == "xfailed" else "ok"


def case_notes(record: HandshakeRecord) -> list[str]:
    """What a report says under its table about one case: the problems of a
    failed case, the reason of an expected failure, the unmeasured notes."""
    state = cell_state(record)
    if state == "fail":
        return problems_of(record) + prediction_notes(record)
    notes = [str(record.expected)] if state == "known" and record.expected else []
    return notes + [str(n) for n in record.unmeasured or ()] + prediction_notes(record)


def prediction_notes(record: HandshakeRecord) -> list[str]:
    """A case that was not what harness/verdict/predict.py said: the prediction."""
    cell = record.predicted if isinstance(record.predicted, dict) else {}
    if record.prediction_matched is not False or not cell:
        return []
    size = cell.get("bytes_min")
    if size is not None and cell.get("bytes_max") not in (None, size):
        size = f"{size}-{cell['bytes_max']}"
    return [f"predicted {cell.get('outcome')} {mechanism_name(cell.get('mechanism')) or '-'}"
            f"{f' {size}B' if size is not None else ''} ({cell.get('why') or cell.get('source')})"]


# the state a cell with several cases (server-constraint variants) shows
_STATE_RANK = {"fail": 4, "unmeasured": 3, "known": 2, "ok": 1, "skip": 0}


def worst_state(records: Iterable[HandshakeRecord]) -> str:
    return max((cell_state(r) for r in records), key=_STATE_RANK.__getitem__, default="skip")


def sign_summary(record: HandshakeRecord) -> str | None:
    """`CKM_ECDSA, single-part C_Sign, 32 bytes in, CKR_OK` or None."""
    sign = _sign(record)
    if not sign:
        return None
    parts = [str(mechanism_name(sign.get("mechanism")) or "unknown mechanism")]
    if parts[0] != "unknown mechanism":
        parts[0] = "CKM_" + parts[0]
    params = sign.get("params")
    if params:
        parts[0] += " " + _compact(params)
    count = sign.get("parts")
    if isinstance(count, int):
        parts.append(f"multi-part ({count} C_SignUpdate)" if count > 0 else "single-part C_Sign")
    if isinstance(sign.get("input_bytes"), int):
        parts.append(f"{sign['input_bytes']} bytes in")
    if sign.get("rv"):
        parts.append(str(sign["rv"]))
    return ", ".join(parts)


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}={_compact(v)}" for k, v in value.items()) + ")"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class MatrixTable:
    """One table: rows key × provisioning, columns client × TLS version.

    A cell holds every case of its row and column; more than one when cases differ by a
    server constraint (forced signature scheme, inflated transcript).
    """

    key: GroupKey
    records: tuple[HandshakeRecord, ...]
    rows: tuple[Heading, ...]
    columns: tuple[Heading, ...]
    cells: dict[tuple[Heading, Heading], tuple[HandshakeRecord, ...]]

    @property
    def title(self) -> str:
        return group_title(self.key, self.records)

    def cases(self, row: Heading, column: Heading) -> tuple[HandshakeRecord, ...]:
        return self.cells.get((row, column), ())

    @property
    def clients(self) -> list[str]:
        """The clients of the columns, in column order, each once."""
        return list(dict.fromkeys(client for client, _ in self.columns))

    @property
    def versions(self) -> list[str]:
        """The TLS versions of the columns, in column order, each once."""
        return list(dict.fromkeys(tls for _, tls in self.columns))

    def counts(self) -> str:
        """pytest's counts for the table's cases, and how many ran where no
        fact was measured."""
        return verdict_counts(self.records)


def verdict_counts(records: Sequence[HandshakeRecord]) -> str:
    """`8 passed, 1 failed, 2 xfailed, 1 skipped` (pytest's words), and
    `; 3 unmeasured on this version` when some cases had no measured fact."""
    verdicts = [verdict_of(r) for r in records]
    text = ", ".join(f"{verdicts.count(v)} {v}" for v in ("passed", "failed", "xfailed", "skipped"))
    unmeasured = sum(cell_state(r) == "unmeasured" for r in records)
    if unmeasured:
        text += f"; {unmeasured} unmeasured on this version"
    return text


def matrix_tables(records: Sequence[HandshakeRecord]) -> list[MatrixTable]:
    """Group records into tables (sorted by host, module path, profile)."""
    groups: dict[GroupKey, list[HandshakeRecord]] = {}
    for record in records:
        groups.setdefault(group_key(record), []).append(record)
    tables = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda r: r.case_id)
        cells: dict[tuple[Heading, Heading], list[HandshakeRecord]] = {}
        for r in members:
            cells.setdefault(((r.key, r.row_label), (r.client, r.tls)), []).append(r)
        rows = sorted({row for row, _ in cells}, key=_row_order)
        columns = sorted({col for _, col in cells}, key=_column_order)
        tables.append(MatrixTable(key, tuple(members), tuple(rows), tuple(columns),
                                  {k: tuple(v) for k, v in cells.items()}))
    return tables


def _row_order(row: Heading) -> tuple[int, str, int, str]:

    key, label = row
    provisioning = label.split(",")[0]
    names = list(KEYS)
    return (names.index(key) if key in names else len(names), key,
            _index(PROVISIONING_ORDER, provisioning), label)


def _column_order(column: Heading) -> tuple[int, str, int, str, int, str]:
    client, tls = column
    # java@25 next to java: order by the name before "@", then the JDK's number
    base, _, jdk = client.partition("@")
    return (_index(CLIENT_ORDER, base), base, int(jdk) if jdk.isdigit() else 0, client,
            _index(TLS_ORDER, tls), tls)


def _index(order: Sequence[str], value: str) -> int:
    return order.index(value) if value in order else len(order)


def group_title(key: GroupKey, records: Sequence[HandshakeRecord] = ()) -> str:
    """`lab1 · SoftHSM v2 (/usr/lib/softhsm/libsofthsm2.so)`, or with a profile
    `emulation of Pico HSM (profile picohsm-emu) on SoftHSM v2 (...)`.

    Under an emulation profile the title says "emulation of <device>": such
    results are the emulation's, never the real device's.
    """
    host, path, profile = key
    module = _module(records[0]) if records else {}
    parts = [host] if host else []
    what = _text(module.get("model")) or "PKCS#11 module"
    what = f"{what} ({path})" if path else what
    # the emulation comes first: this table is never the emulated device's
    parts.append(f"{emulation_label(profile, records)} on {what}" if profile else what)
    return " · ".join(parts)


def emulation_label(profile: str, records: Sequence[HandshakeRecord] = ()) -> str:
    """`emulation of Pico HSM (profile picohsm-emu)`."""
    device = ""
    for r in records:
        device = _text(_module(r).get("emulates")) or _text(getattr(r, "emulates", None))
        if device:
            break
    if not device:
        device = profile.removesuffix("-emu")
    return f"emulation of {device} (profile {profile})"


def environment(table: MatrixTable) -> list[tuple[str, str]]:
    """(label, text) lines: module, token, client versions, result counts."""
    module = _module(table.records[0]) if table.records else {}
    host, path, profile = table.key
    lines = []
    if host:
        lines.append(("Host", host))
    library = _text(module.get("library"))
    text = path or "not recorded"
    if library:
        text += f" ({library})"
    if module.get("embedded"):
        text += ", the embedded throw-away token"
    lines.append(("Module", text))
    token = _text(module.get("model")) or "model not recorded"
    if module.get("manufacturer"):
        token += f" by {_text(module.get('manufacturer'))}"
    token += f", firmware {_text(module.get('firmware')) or 'not recorded'}"
    if module.get("token_label"):
        token += f", label {_text(module.get('token_label'))}"
    if profile:
        token += f"; results come from an {emulation_label(profile, table.records)}"
    lines.append(("Token", token))
    # one entry per version string: java and its variants usually share one
    users: dict[str, set[str]] = {}
    for r in table.records:
        if r.client_version:
            users.setdefault(" ".join(str(r.client_version).split()), set()).add(r.client)
    entries = sorted(((sorted(names, key=lambda c: _column_order((c, ""))), version)
                      for version, names in users.items()),
                     key=lambda e: _column_order((e[0][0], "")))
    clients = "; ".join(f"{', '.join(names)}: {version}" for names, version in entries)
    lines.append(("Clients", clients or "versions not recorded"))
    lines.append(("Result", table.counts()))
    return lines


def _module(record: HandshakeRecord) -> dict[str, Any]:
    return record.module if isinstance(record.module, dict) else {}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# --- Markdown ---------------------------------------------------------------------

