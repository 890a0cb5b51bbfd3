"""Working on results files: render them (`p11tls report`), merge runs from
several lab hosts (`p11tls merge`) and compare two runs (`p11tls diff`).

A case is identified across files by (host, module path, profile, case_id):
the same case id on two hosts or two modules is two cases.
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from harness.errors import ConfigError, HarnessError
from harness.process import NotReadable, read_bounded
from harness.reports.markdown import render_markdown
from harness.reports.layout import FAILED, cell_text, group_key
from harness.matrix.record import VERDICTS, HandshakeRecord, verdict_of, write_results

__all__ = [
    "CaseKey",
    "CellChange",
    "ChangeKind",
    "DiffResult",
    "diff",
    "failed_cases",
    "load_results",
    "merge",
    "write_reports",
]

# (host, module path, profile, case_id, token): the token last, so key[3] stays the case id
CaseKey = tuple[str, str, str, str, str]
MAX_RESULTS_BYTES = 512 * 1024 * 1024  # far above any real run; more is not a results file
MAX_DEPTH = 64  # a record nests a few levels (calls, params); deeper is not one
_REQUIRED = ("case_id", "client", "key", "provisioning", "tls", "outcome")
_OPTIONAL_TEXT = ("profile", "client_version", "negotiated_version", "cipher",
                  "signature_scheme", "client_subject", "error", "expected")


def case_key(record: HandshakeRecord) -> CaseKey:
    host, path, profile = group_key(record)
    return (host, path, profile, record.case_id, token_of(record))


def token_of(record: HandshakeRecord) -> str:
    """`label#serial` of the record's token: two tokens of one module are two cases."""
    module = record.module if isinstance(record.module, dict) else {}
    label, serial = str(module.get("token_label") or ""), str(module.get("serial") or "")
    return f"{label}#{serial}" if serial else label


def _too_deep(value: object) -> bool:
    """Nesting deeper than MAX_DEPTH (walked without recursion)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


# --- reading ------------------------------------------------------------------------


def load_results(path: Path) -> list[HandshakeRecord]:
    """Read a results.json; anything that is not one raises ConfigError (one line).

    Each entry must be an object with the identifying fields as strings, so a
    hand-edited or foreign file fails here and not as a traceback somewhere in
    a renderer.
    """
    try:
        text = read_bounded(path, MAX_RESULTS_BYTES).decode("utf-8")
    except NotReadable as exc:
        raise ConfigError(f"{path} is not a results file: {exc.strerror}") from None
    except FileNotFoundError:
        raise ConfigError(f"results file {path} not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a results file: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read results file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a results file: not JSON ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path} is not a results file: JSON nested too deeply") from None
    except MemoryError:
        raise ConfigError(f"{path} is not a results file: too large to read") from None
    if _too_deep(data):
        raise ConfigError(f"{path} is not a results file: JSON nested more than "
                          f"{MAX_DEPTH} levels deep")
    if not isinstance(data, list):
        raise ConfigError(f"{path} is not a results file: expected a JSON list of cases, "
                          f"found {_json_kind(data)}")
    known = set(HandshakeRecord.__dataclass_fields__)
    records = []
    for i, entry in enumerate(data):
        where = f"{path} is not a results file: entry {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} is {_json_kind(entry)}, not an object")
        for name in _REQUIRED:
            if not isinstance(entry.get(name), str):
                raise ConfigError(f"{where} needs {name!r} as text, found {entry.get(name)!r}")
        for name in _OPTIONAL_TEXT:
            if not isinstance(entry.get(name), (str, type(None))):
                raise ConfigError(f"{where}: {name!r} must be text or null")
        values = {k: v for k, v in entry.items() if k in known}
        for name in ("module", "logs"):  # null is read as empty
            if values.get(name) is None:
                values[name] = {}
            elif not isinstance(values[name], dict):
                raise ConfigError(f"{where}: {name!r} must be an object")
        if values.get("sign") is not None and not isinstance(values["sign"], dict):
            raise ConfigError(f"{where}: 'sign' must be an object or null")
        if values.get("calls") is not None and not isinstance(values["calls"], list):
            raise ConfigError(f"{where}: 'calls' must be a list or null")
        if values.get("verdict") is not None and values["verdict"] not in VERDICTS:
            raise ConfigError(f"{where}: 'verdict' must be one of {', '.join(VERDICTS)} or null")
        for name in ("problems", "unmeasured"):  # lists of texts; null is read as empty
            if values.get(name) is None:
                values[name] = []
            elif not (isinstance(values[name], list)
                      and all(isinstance(v, str) for v in values[name])):
                raise ConfigError(f"{where}: {name!r} must be a list of texts")
        for name, kinds in _NUMBERS.items():
            value = values.get(name)
            if value is not None and not _count(value, kinds):
                raise ConfigError(f"{where}: {name!r} must be a number >= 0 or null, "
                                  f"found {value!r}")
        for name in ("explanation", "predicted"):
            if values.get(name) is not None and not isinstance(values[name], dict):
                raise ConfigError(f"{where}: {name!r} must be an object or null")
        if values.get("prediction_matched") not in (None, True, False):
            raise ConfigError(f"{where}: 'prediction_matched' must be true, false or null")
        if values.get("versions") is None:
            values["versions"] = {}
        elif not isinstance(values["versions"], dict):
            raise ConfigError(f"{where}: 'versions' must be an object")
        records.append(HandshakeRecord(**values))
    return records


_NUMBERS: dict[str, tuple[type, ...]] = {"padding_bytes": (int,), "signed_bytes": (int,),
                                         "duration_s": (int, float)}


def _count(value: object, kinds: tuple[type, ...]) -> bool:
    """A finite number >= 0 of the kinds (true/false are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, kinds):
        return False
    assert isinstance(value, (int, float))
    return math.isfinite(value) and value >= 0


def _no_constant(name: str) -> object:
    """json's NaN / Infinity: no results file holds them."""
    raise ValueError(f"{name} is not a number a results file holds")


def _json_kind(value: object) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "true/false",
             int: "a number", float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


# --- writing ------------------------------------------------------------------------


def write_reports(records: Sequence[HandshakeRecord], out_dir: Path, *,
                  log_base: Path | None = None) -> tuple[Path, Path]:
    """Write out_dir/matrix.html and out_dir/matrix.md; returns their paths.

    Relative log paths in the records are read from `log_base` (default
    out_dir, the reports directory they are relative to).
    """
    from harness.reports.html import render_html

    out_dir = Path(out_dir)
    html_path, md_path = out_dir / "matrix.html", out_dir / "matrix.md"
    html = render_html(records, log_base=log_base if log_base is not None else out_dir)
    markdown = render_markdown(records)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(html_path, html)
        _write_atomic(md_path, markdown)
    except OSError as exc:
        raise ConfigError(f"cannot write reports into {out_dir}: {exc.strerror or exc}") from None
    return html_path, md_path


def _write_atomic(path: Path, text: str) -> None:
    # a browser or CI artefact upload never sees a half-written report
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
