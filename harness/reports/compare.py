"""Working on results: merge runs from
several lab hosts (`p11tls merge`) and compare two runs (`p11tls diff`).

A case is identified across files by (host, module path, profile, case_id):
the same case id on two hosts or two modules is two cases.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.errors import ConfigError
from harness.reports.layout import FAILED, cell_text, group_key
from harness.matrix.record import HandshakeRecord, verdict_of

__all__ = [
    "CaseKey",
    "CellChange",
    "ChangeKind",
    "DiffResult",
    "diff",
    "failed_cases",
    "merge",
]

# (host, module path, profile, case_id, token): the token last, so key[3] stays the case id
CaseKey = tuple[str, str, str, str, str]


def case_key(record: HandshakeRecord) -> CaseKey:
    host, path, profile = group_key(record)
    return (host, path, profile, record.case_id, token_of(record))


def token_of(record: HandshakeRecord) -> str:
    """`label#serial` of the record's token: two tokens of one module are two cases."""
    module = record.module if isinstance(record.module, dict) else {}
    label, serial = str(module.get("token_label") or ""), str(module.get("serial") or "")
    return f"{label}#{serial}" if serial else label


# --- merge --------------------------------------------------------------------------


def merge(results: Sequence[Sequence[HandshakeRecord]], sources: Sequence[str | Path],
          notes: list[str] | None = None, *, refuse: bool = False) -> list[HandshakeRecord]:
    """Merge runs from several lab hosts into one list, each host kept apart.

    A record without module["host"] is tagged with its source's file stem
    (`lab1.json` -> host "lab1"; two sources with the same stem get their
    parent directory added). A case that appears twice for the same
    host/module/profile keeps the later one. Every such decision is appended
    to `notes` as one line; nothing is dropped without a note. With `refuse`,
    a case that appears twice with different records raises ConfigError
    instead (the same record twice, one file given twice, is one case).
    """
    if len(results) != len(sources):
        raise ConfigError(f"merge: {len(results)} results lists but {len(sources)} sources")
    said = notes if notes is not None else []
    tags = _host_tags([Path(s) for s in sources])
    merged: dict[CaseKey, tuple[HandshakeRecord, str]] = {}
    for records, source, tag in zip(results, sources, tags):
        tagged_here = 0
        for record in records:
            module = dict(record.module) if isinstance(record.module, dict) else {}
            if not module.get("host"):
                module["host"] = tag
                tagged_here += 1
            record = replace(record, module=module)
            key = case_key(record)
            if key in merged and refuse and merged[key][0].to_json() != record.to_json():
                raise ConfigError(
                    f"{record.case_id} on {_where(key)} is in both {merged[key][1]} and "
                    f"{source}: merging would drop one of them; give results of different "
                    "hosts, modules, tokens or profiles, or pass --replace to keep the later")
            if key in merged:
                said.append(f"{record.case_id} on {_where(key)} is in both "
                            f"{merged[key][1]} and {source}: keeping the one from {source}")
            merged[key] = (record, str(source))
        if tagged_here:
            said.append(f"{source}: {tagged_here} cases without a host, tagged host {tag!r}")
    return [record for record, _ in merged.values()]


def _host_tags(paths: list[Path]) -> list[str]:
    """File stems; a stem shared by different files gets its directory, then a number.

    The same file given twice keeps one tag: its cases are duplicates (later wins).
    """
    files = [p.resolve() for p in paths]
    tags = [p.stem for p in files]
    for step in ("directory", "number"):
        files_per_tag: dict[str, set[Path]] = {}
        for file, tag in zip(files, tags):
            files_per_tag.setdefault(tag, set()).add(file)
        for i, tag in enumerate(tags):
            if len(files_per_tag[tag]) > 1:
                tags[i] = (f"{files[i].parent.name}/{tag}" if step == "directory"
                           else f"{tag}#{i + 1}")
    return tags


def _where(key: CaseKey) -> str:
    host, path, profile, _, token = key
    parts = [p for p in (host, path) if p]
    if "#" in token:  # records with a token serial (older ones have none): name the token
        parts.append(f"token {token}")
    if profile:
        parts.append(f"profile {profile}")
    return " ".join(parts) or "an unnamed module"


# --- diff ---------------------------------------------------------------------------


class ChangeKind(enum.Enum):
    """How a cell changed, in the order a diff lists them."""

    REGRESSION = "regression"  # ok before, fails now
    FIXED = "fixed"  # failed before, ok now
    CHANGED = "changed"  # anything else in the cell (CKR code, mechanism, size, skip)
    NEW = "new"
    REMOVED = "removed"


@dataclass(frozen=True)
class CellChange:
    kind: ChangeKind
    key: CaseKey
    old: HandshakeRecord | None
    new: HandshakeRecord | None

    def describe(self) -> str:
        """`REGRESSION  lab1 /usr/lib/x.so java-p256-generate-tls12: ok ECDSA 32B -> ...`."""
        before = _cell(self.old) if self.old is not None else "(absent)"
        after = _cell(self.new) if self.new is not None else "(absent)"
        text = f"{self.kind.value.upper():<10}  {_where(self.key)} {self.key[3]}: "
        if self.kind is ChangeKind.NEW:
            text += after
        elif self.kind is ChangeKind.REMOVED:
            text += f"was {before}"
        else:
            text += f"{before} -> {after}"
        if self.kind is ChangeKind.REGRESSION and self.new is not None:
            why = self.new.error if self.new.outcome != "ok" else "; ".join(self.new.problems)
            if why:
                text += f" ({' '.join(why.split())[:160]})"
        return text


def _cell(record: HandshakeRecord) -> str:
    text = cell_text(record)
    return text + " (known failure)" if verdict_of(record) == "xfailed" else text


def _was_ok(record: HandshakeRecord) -> bool:
    return record.outcome == "ok" and verdict_of(record) == "passed"


def _fails(record: HandshakeRecord) -> bool:
    """Failed its checks, or its handshake failed (also as a known failure)."""
    return verdict_of(record) == "failed" or (
        record.outcome in FAILED and verdict_of(record) != "skipped")


def failed_cases(records: Sequence[HandshakeRecord]) -> list[HandshakeRecord]:
    """The cases whose verdict is failed (not an expected failure, not a skip)."""
    return [r for r in records if verdict_of(r) == "failed"]


@dataclass(frozen=True)
class DiffResult:
    """The changed cells between two runs: regressions first, then fixes,
    other changes, new and removed cases."""

    changes: tuple[CellChange, ...]
    unchanged: int = 0

    def of(self, kind: ChangeKind) -> list[CellChange]:
        return [c for c in self.changes if c.kind is kind]

    @property
    def has_regression(self) -> bool:
        """A case that passed now fails (its handshake, or its checks): what a
        nightly job alarms on."""
        return any(c.kind is ChangeKind.REGRESSION for c in self.changes)

    def summary(self) -> str:
        counts = ", ".join(f"{len(self.of(k))} {k.value}" for k in ChangeKind)
        return f"{counts}; {self.unchanged} unchanged"

    def format(self) -> str:
        lines = [c.describe() for c in self.changes]
        return "\n".join(lines + [self.summary()])


def diff(old: Sequence[HandshakeRecord], new: Sequence[HandshakeRecord]) -> DiffResult:
    """Compare two runs cell by cell (keyed by host, module, profile, case id)."""
    before = {case_key(r): r for r in old}
    after = {case_key(r): r for r in new}
    changes: list[CellChange] = []
    unchanged = 0
    for key in sorted(before.keys() | after.keys()):
        o, n = before.get(key), after.get(key)
        if o is None:
            changes.append(CellChange(ChangeKind.NEW, key, None, n))
        elif n is None:
            changes.append(CellChange(ChangeKind.REMOVED, key, o, None))
        elif _was_ok(o) and _fails(n):
            changes.append(CellChange(ChangeKind.REGRESSION, key, o, n))
        elif _fails(o) and _was_ok(n):
            changes.append(CellChange(ChangeKind.FIXED, key, o, n))
        elif (_cell(o) != _cell(n) or o.outcome != n.outcome
              or verdict_of(o) != verdict_of(n)):
            changes.append(CellChange(ChangeKind.CHANGED, key, o, n))
        else:
            unchanged += 1
    order = list(ChangeKind)
    changes.sort(key=lambda c: order.index(c.kind))  # stable: keys stay sorted per kind
    return DiffResult(tuple(changes), unchanged)
