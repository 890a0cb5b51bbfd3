"""The files of a run: results.json (read, checked against its JSON Schema,
written) and the reports rendered from it (matrix.html, matrix.md).

results.json is documented by harness/data/results.schema.json: format 2 is
an object {"format_version": 2, "cases": [...]}; format 1, the bare list of
cases of earlier releases, is still read. The schema is also what the
loader checks, through the small validator below (the keywords the schema
uses, no more; an unknown keyword is an error, not silently passed), so the
one description of the format is the one that is enforced.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import fields
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.process import NotReadable, read_bounded
from harness.matrix.record import HandshakeRecord, verdict_of
from harness.reports.markdown import render_markdown
from harness.reports.html import render_html

__all__ = ["FORMAT_VERSION", "load_results", "schema", "validate", "write_reports",
           "write_results"]

FORMAT_VERSION = 2
MAX_RESULTS_BYTES = 512 * 1024 * 1024  # far above any real run; more is not a results file
MAX_DEPTH = 64  # a record nests a few levels (calls, params); deeper is not one
V1_REQUIRED = ("case_id", "client", "key", "provisioning", "tls", "outcome")
_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "examples", "default",
                "$defs"}
_TYPES: dict[str, Any] = {"string": str, "object": dict, "array": list, "null": type(None),
                          "boolean": bool}


@cache
def schema() -> dict[str, Any]:
    """The results.json schema (harness/data/results.schema.json)."""
    text = files("harness").joinpath("data/results.schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(value: Any, node: dict[str, Any] | None = None, where: str = "the file") -> None:
    """Raise ValueError (`<where>: <what>`, one line) where `value` breaks the
    schema node (default: the whole results.json schema)."""
    root = schema()
    node = root if node is None else node
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        node = {**root["$defs"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    unknown = set(node) - _ANNOTATIONS - {"type", "enum", "const", "required", "properties",
                                          "additionalProperties", "items", "minimum"}
    if unknown:
        raise ValueError(f"the schema uses {', '.join(sorted(unknown))}, which this "
                         "validator does not know")
    if "const" in node and value != node["const"]:
        raise ValueError(f"{where} must be {_show(node['const'])}, found {_show(value)}")
    if "enum" in node and value not in node["enum"]:
        raise ValueError(f"{where} must be one of {', '.join(node['enum'])}, "
                         f"found {_show(value)}")
    kinds = node.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            raise ValueError(f"{where} must be {' or '.join(kinds)}, found {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, found {value}")
    if "minimum" in node and _is(value, "number") and value < node["minimum"]:
        raise ValueError(f"{where} must be at least {node['minimum']}, found {_show(value)}")
    if isinstance(value, dict):
        for name in node.get("required", ()):
            if name not in value:
                raise ValueError(f"{where} has no {name!r}")
        properties = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                validate(item, properties[name], f"{where}: {name!r}")
            elif extra is False:
                raise ValueError(f"{where} has {name!r}, which is not a field of the format")
            elif isinstance(extra, dict):
                validate(item, extra, f"{where}: {name!r}")
    if isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            validate(item, node["items"], f"{where} [{i}]" if "entry" in where else f"entry {i}")


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


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


# --- reading ------------------------------------------------------------------------


def load_results(path: Path) -> list[HandshakeRecord]:
    """Read a results.json of format 2 or 1; anything that is not one raises
    ConfigError with one line saying where and what (never a traceback later
    in a renderer)."""
    try:
        text = read_bounded(path, MAX_RESULTS_BYTES).decode("utf-8")  # by bytes read
    except NotReadable as exc:
        raise ConfigError(f"{path} is not a results file: {exc.strerror}") from None
    except FileNotFoundError:
        raise ConfigError(f"results file {path} not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a results file: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read results file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)  # no NaN, no Infinity
    except ValueError as exc:
        raise ConfigError(f"{path} is not a results file: not JSON ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path} is not a results file: JSON nested too deeply") from None
    except MemoryError:
        raise ConfigError(f"{path} is not a results file: too large to read") from None
    if _too_deep(data):
        raise ConfigError(f"{path} is not a results file: JSON nested more than "
                          f"{MAX_DEPTH} levels deep")
    try:
        entries = _cases(data)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a results file: {exc}") from None
    known = {f.name for f in fields(HandshakeRecord)}
    records = []
    for entry in entries:
        values = {k: v for k, v in entry.items() if k in known}  # format 1: fields since dropped
        for name in ("module", "logs", "versions"):  # null is read as empty
            values[name] = values.get(name) or {}
        for name in ("problems", "unmeasured"):
            values[name] = values.get(name) or []
        records.append(HandshakeRecord(**values))
    return records


def _cases(data: Any) -> list[dict[str, Any]]:
    """The case entries of format 2 (checked against the schema) or format 1
    (the bare list: each case against the schema, with fewer required fields)."""
    if isinstance(data, dict):
        if "format_version" in data and data["format_version"] != FORMAT_VERSION:
            raise ValueError(f"format_version {_show(data['format_version'])}: this p11tls "
                             f"reads formats 1 and {FORMAT_VERSION}; a newer p11tls wrote it")
        validate(data)
        cases: list[dict[str, Any]] = data["cases"]
        return cases
    if not isinstance(data, list):
        raise ValueError(f"expected an object with format_version and cases (or, format 1, "
                         f"a list of cases), found {_show(data)}")
    case = schema()["$defs"]["case"]
    v1 = {**case, "required": list(V1_REQUIRED), "additionalProperties": True}
    for i, entry in enumerate(data):
        if isinstance(entry, dict) and entry.get("verdict", "") is None:
            entry = {k: v for k, v in entry.items() if k != "verdict"}  # format 1: not recorded
        validate(entry, v1, f"entry {i}")
    return data


# --- writing ------------------------------------------------------------------------


def results_json(records: Sequence[HandshakeRecord]) -> dict[str, Any]:
    """The format-2 document; a record without a verdict (a sweep) gets the
    one its outcome implies."""
    cases = []
    for record in sorted(records, key=lambda r: r.case_id):
        entry = record.to_json()
        entry["verdict"] = verdict_of(record)
        cases.append(entry)
    return {"format_version": FORMAT_VERSION, "cases": cases}


def write_results(records: Sequence[HandshakeRecord], path: Path) -> None:
    """Write results.json, checked against its schema first: a harness bug
    fails here with the field it got wrong, not in a consumer's dashboard."""
    document = results_json(records)
    try:
        validate(document)
    except ValueError as exc:
        raise ConfigError(f"not writing {path}: the results break their schema: {exc}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_reports(records: Sequence[HandshakeRecord], out_dir: Path, *,
                  log_base: Path | None = None) -> tuple[Path, Path]:
    """Write out_dir/matrix.html and out_dir/matrix.md; returns their paths.

    Relative log paths in the records are read from `log_base` (default
    out_dir, the reports directory they are relative to).
    """

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
