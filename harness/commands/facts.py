"""`p11tls facts`: the facts a run measured, as data-file entries keyed to
the versions they were measured on, for review.

A run on a distribution whose versions have no facts yet reports its cases
as "unmeasured on this version". This command turns those records into
`[[expect]]` entries (outcome, signing call, `versions = { ... }` as
detected), one file per data file, so adding a distribution is a run, this
command, a review of the reasons and an append:

    ./run matrix
    .venv/bin/p11tls facts reports/results.json        # writes reports/facts/
    cat reports/facts/expected_mechanisms.toml >> harness/data/expected_mechanisms.toml
    git diff harness/data

Only records of the embedded default token are used (the data files describe
it); a failure's reason is left as a TODO for the reviewer to write.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.commands import run_command
from harness.errors import ConfigError
from harness.matrix.record import HandshakeRecord, verdict_of
from harness.reports.files import load_results
from harness.reports.layout import failure_code
from harness.versions import MODULE_COMPONENTS

# a signed input longer than this is a whole transcript: its size varies with
# the certificates, so only a lower bound is a fact
WHOLE_MESSAGE = 512
_DIMENSIONS = ("provisioning", "tls", "clients", "keys")


def target_file(record: HandshakeRecord) -> str:
    """Which data file (relative to harness/data) a record's fact belongs in."""
    if record.profile:
        return f"outcomes/{record.profile}.toml"
    return "expected_mechanisms.toml" if record.outcome == "ok" else "known_failures.toml"


def fact_of(record: HandshakeRecord) -> dict[str, Any]:
    """One [[expect]] entry for exactly this case, keyed to its versions."""
    entry: dict[str, Any] = {
        # a per-JDK client (java@25) is matched as its base client keyed to its java version
        "clients": [record.client.split("@", 1)[0]], "keys": [record.key], "tls": [record.tls],
        "provisioning": [record.provisioning],
    }
    if record.client_sigalgs:
        entry["sigalgs"] = record.client_sigalgs
    versions = {k: v for k, v in (record.versions or {}).items() if v is not None}
    if any(v is None for k, v in (record.versions or {}).items() if k not in MODULE_COMPONENTS):
        raise ConfigError(f"{record.case_id}: a component's version was not detected "
                          f"({record.versions}); a fact needs every version")
    entry["versions"] = versions
    if record.outcome != "ok":
        code = failure_code(record)
        entry["outcome"] = "fail"
        entry["reason"] = f"TODO: why it fails (measured: {' '.join(str(record.error).split())})"
        if code.startswith("CKR_"):
            entry["error"] = code
    sign = record.sign if isinstance(record.sign, dict) else {}
    if sign.get("mechanism"):
        entry["mechanism"] = sign["mechanism"]
        if sign.get("params"):
            entry["params"] = sign["params"]
        size, parts = sign.get("input_bytes"), sign.get("parts")
        if isinstance(parts, int):
            entry["parts" if parts == 0 else "parts_min"] = 0 if parts == 0 else 1
        if isinstance(size, int):
            entry["input_bytes_min" if size > WHOLE_MESSAGE else "input_bytes"] = (
                1000 if size > WHOLE_MESSAGE else size)
        if sign.get("rv") and record.outcome != "ok":
            entry["rv"] = sign["rv"]
    return entry


def merge_facts(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join entries that differ in one match dimension only (same facts, same
    versions), until none do: each result covers exactly the cases it came from."""
    changed = True
    while changed:
        changed = False
        for dimension in _DIMENSIONS:
            groups: dict[str, dict[str, Any]] = {}
            for entry in entries:
                rest = json.dumps({k: v for k, v in entry.items() if k != dimension},
                                  sort_keys=True)
                if rest in groups:
                    merged = groups[rest][dimension]
                    merged += [v for v in entry[dimension] if v not in merged]
                    changed = True
                else:
                    groups[rest] = {**entry, dimension: list(entry[dimension])}
            entries = list(groups.values())
    return entries


def new_facts(records: Sequence[HandshakeRecord], *, every: bool = False
              ) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """{data file: entries} for the records measured on versions with no
    facts (every record with `every`), and notes on the records left out."""
    files: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    for record in sorted(records, key=lambda r: r.case_id):
        if verdict_of(record) == "skipped" or record.outcome == "error":
            continue
        if not (every or record.unmeasured):
            continue
        if not (record.module or {}).get("embedded"):
            notes.append(f"{record.case_id}: not on the embedded default token; left out")
            continue
        if not record.versions:
            notes.append(f"{record.case_id}: the record names no versions; left out")
            continue
        files.setdefault(target_file(record), []).append(fact_of(record))
    return {name: merge_facts(entries) for name, entries in files.items()}, notes


# -- TOML --------------------------------------------------------------------------


def _toml_key(name: str) -> str:
    return name if name.replace("_", "").isalnum() else json.dumps(name)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {value!r} as TOML")


def render_toml(entries: list[dict[str, Any]], header: str) -> str:
    out = [f"# {line}" if line else "#" for line in header.splitlines()]
    for entry in entries:
        out += ["", "[[expect]]"]
        out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(out) + "\n"


def facts_main(argv: Sequence[str] | None = None) -> int:
    """`p11tls facts [RESULTS.json] [-o DIR] [--all]`."""
    parser = argparse.ArgumentParser(
        prog="p11tls facts",
        description="Write the facts a run measured on versions that have none yet (cases "
        "marked 'unmeasured on this version') as [[expect]] entries keyed to those versions, "
        "one TOML file per data file under DIR, for review and appending to harness/data/.")
    parser.add_argument("results", type=Path, nargs="?", default=Path("reports/results.json"))
    parser.add_argument("-o", "--out-dir", type=Path, default=None,
                        help="where to write them (default: facts/ next to the results file)")
    parser.add_argument("--all", action="store_true",
                        help="every case of the run, not only the unmeasured ones")

    def run(args: argparse.Namespace) -> int:
        records = load_results(args.results)
        files, notes = new_facts(records, every=args.all)
        for note in notes:
            print(f"p11tls facts: {note}", file=sys.stderr)
        if not files:
            print(f"{args.results}: no new facts (every case was measured on its versions)")
            return 0
        out_dir = args.out_dir if args.out_dir is not None else args.results.parent / "facts"
        for name, entries in sorted(files.items()):
            path = out_dir / name
            # no path of this machine: the text goes into the repository
            header = (f"New facts measured by a run ({args.results.name}) on the versions each "
                      f"entry names.\nReview them (write every TODO reason), then append them "
                      f"to harness/data/{name}.")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(render_toml(entries, header), encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
            print(f"wrote {path}: {len(entries)} entries for harness/data/{name}")
        return 0

    return run_command(parser, run, argv)
