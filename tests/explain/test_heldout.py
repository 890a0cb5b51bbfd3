"""Held-out field logs made here: configurations no other test uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from explain_helpers import HELDOUT

from harness.explain.explanation import explain_file

# --- held-out field logs: configurations no other test uses -------------------------------




@pytest.mark.parametrize("log", sorted(p.name for p in HELDOUT.iterdir()
                                       if p.suffix in (".log", ".jsonl")))
def test_heldout_log(log):
    """Format, first failing call (function, return code, mechanism, size), a finding
    for every failing call and the expected rules; expectations written from the
    scenario that made the log (tests/data/explain/heldout/README.md)."""
    import tomllib

    from harness.explain.explanation import parse_file as parse
    from harness.explain.rules import failed

    expect = tomllib.loads((HELDOUT / log).with_suffix(".expect.toml").read_text())
    explanation = explain_file(HELDOUT / log)
    assert explanation.format.value == expect["format"]
    wanted = expect.get("first_failure")
    if wanted is None:
        assert explanation.first_failure is None
    else:
        call = explanation.calls[explanation.first_failure]
        assert (call.fn, call.rv) == (wanted["fn"], wanted["rv"])
        assert call.mechanism == wanted.get("mechanism", call.mechanism)
        if "size" in wanted:
            assert (call.operation_bytes or call.input_bytes) == wanted["size"]
            assert any(f"{wanted['size']} bytes" in f.summary for f in explanation.findings
                       if f.call == explanation.first_failure)
    found = {f.rule for f in explanation.findings}
    assert set(expect["rules"]) <= found, found
    parsed = parse(HELDOUT / log)
    failing = sum(1 for c in parsed.calls if failed(c))
    assert len({f.call for f in explanation.findings if not f.harmless}
               | {f.call for f in explanation.findings if f.harmless}) >= failing
    if "problem" in expect:
        assert any(expect["problem"] in p for p in explanation.problems), explanation.problems
    else:
        assert explanation.problems == ()


def test_heldout_set_covers_every_new_configuration():
    formats = {tomllib_load(p)["format"] for p in HELDOUT.glob("*.expect.toml")}
    assert {"pkcs11-spy", "p11-kit", "harness", "nss-debug", "tpm2-pkcs11"} <= formats
    logs = {p.stem for p in HELDOUT.iterdir() if p.suffix in (".log", ".jsonl")}
    assert logs == {p.name.removesuffix(".expect.toml") for p in HELDOUT.glob("*.expect.toml")}


def tomllib_load(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())
