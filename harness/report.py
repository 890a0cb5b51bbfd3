"""Rendering results: the terminal matrix (rows key × provisioning, columns
client × TLS version)."""

from __future__ import annotations

from harness.record import HandshakeRecord

TLS_ORDER = ("1.2", "1.3")


def cell(record: HandshakeRecord) -> str:
    """One matrix cell: ok/FAIL (xfail when known) and the signature scheme or error."""
    if record.outcome == "ok":
        return f"ok {record.signature_scheme or ''}".strip()
    if record.outcome == "skip":
        return "skip"
    word = "xfail" if record.expected else record.outcome.upper()
    return f"{word} {record.error or ''}".strip()[:40]


def terminal_matrix(records: list[HandshakeRecord]) -> str:
    """A plain-text table; one block per module."""
    if not records:
        return "no handshake cases were run"
    clients = sorted({r.client for r in records})
    columns = [(c, t) for c in clients for t in TLS_ORDER
               if any(r.client == c and r.tls == t for r in records)]
    rows = sorted({(r.key, r.provisioning) for r in records},
                  key=lambda kp: (_key_order(kp[0]), kp[1]))
    by_slot = {(r.key, r.provisioning, r.client, r.tls): r for r in records}
    header = ["key", "provisioning"] + [f"{c} TLS{t}" for c, t in columns]
    table = [header]
    for key, prov in rows:
        table.append([key, prov] + [
            cell(by_slot[(key, prov, c, t)]) if (key, prov, c, t) in by_slot else "-"
            for c, t in columns
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ok = sum(r.outcome == "ok" for r in records)
    failed = sum(r.outcome in ("fail", "error") and not r.expected for r in records)
    known = sum(r.outcome in ("fail", "error") and bool(r.expected) for r in records)
    skipped = sum(r.outcome == "skip" for r in records)
    lines.append(f"{ok} ok, {failed} failed, {known} known failures, {skipped} skipped")
    return "\n".join(lines)


def _key_order(name: str) -> int:
    from harness.keys import KEYS

    return list(KEYS).index(name) if name in KEYS else len(KEYS)
