"""results.json format 2 and its JSON Schema (harness/data/results.schema.json):
every field documented, what the harness writes valid, bad files one line."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from harness.commands.diff import diff_main
from harness.commands.merge import merge_main
from harness.commands.show import show_main
from harness.errors import ConfigError
from harness.matrix.record import HandshakeRecord
from harness.reports.files import FORMAT_VERSION, load_results, schema, validate, write_results

DATA = Path(__file__).parents[1] / "data" / "results"
OLD = sorted(DATA.glob("*.json"))  # format 1: the bare list of earlier releases


def good_case(**change: object) -> dict[str, object]:
    case = HandshakeRecord("gnutls-p256-generate-tls13", "gnutls", "p256", "generate", "1.3",
                           "ok", verdict="passed", duration_s=0.4).to_json()
    case.update(change)
    return case


def document(*cases: dict[str, object]) -> dict[str, object]:
    return {"format_version": FORMAT_VERSION, "cases": list(cases)}


def test_every_record_field_is_documented_in_the_schema():
    case = schema()["$defs"]["case"]
    assert set(case["properties"]) == {f.name for f in fields(HandshakeRecord)}
    for name, node in case["properties"].items():
        assert node.get("description"), name
    outcome, verdict = case["properties"]["outcome"], case["properties"]["verdict"]
    assert "handshake" in outcome["description"] and "pytest" in verdict["description"]


def test_a_good_record_validates():
    validate(document(good_case()))  # control for the failures below


@pytest.mark.parametrize("case,why", [
    ({k: v for k, v in good_case().items() if k != "verdict"}, "has no 'verdict'"),
    (good_case(outcome="passed"), "'outcome' must be one of ok, fail, error, skip"),
    (good_case(verdict="ok"), "'verdict' must be one of"),
    (good_case(duration_s="slow"), "'duration_s' must be number or null"),
    (good_case(duration_s=-1), "'duration_s' must be at least 0"),
    (good_case(padding_bytes=True), "'padding_bytes' must be integer or null"),
    (good_case(problems=[3]), "'problems' [0] must be string"),
    (good_case(colour="red"), "has 'colour', which is not a field"),
    (good_case(sign={"input_bytes": "32"}), "'sign': 'input_bytes' must be integer"),
])
def test_a_bad_record_fails_validation_saying_where(case, why):
    with pytest.raises(ValueError, match="entry 0") as caught:
        validate(document(case))
    assert why in str(caught.value)


def test_the_validator_refuses_keywords_it_does_not_know():
    with pytest.raises(ValueError, match="pattern"):
        validate("x", {"type": "string", "pattern": "^x$"})


def test_what_the_harness_writes_validates_and_reads_back(tmp_path):
    records = load_results(DATA / "lab1.json")
    write_results(records, tmp_path / "results.json")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["format_version"] == FORMAT_VERSION
    validate(data)
    assert [r.case_id for r in load_results(tmp_path / "results.json")] == sorted(
        r.case_id for r in records)


def test_the_writer_refuses_a_record_that_breaks_the_schema(tmp_path):
    bad = HandshakeRecord("x", "gnutls", "p256", "generate", "1.3", "maybe")
    with pytest.raises(ConfigError, match="'outcome' must be one of"):
        write_results([bad], tmp_path / "results.json")
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("old", OLD, ids=[p.name for p in OLD])
def test_show_diff_merge_read_the_previous_format(old, tmp_path, capsys):
    assert isinstance(json.loads(old.read_text()), list)  # it is format 1
    assert show_main([str(old)]) in (0, 1)
    assert diff_main([str(old), str(old)]) == 0
    assert merge_main([str(old), "-o", str(tmp_path / "all.json")]) == 0
    merged = json.loads((tmp_path / "all.json").read_text())
    validate(merged)  # merge writes format 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("text,why", [
    ('{"format_version": 2, "cases": [%s]}' % json.dumps(good_case()).replace(
        '"duration_s": 0.4', '"duration_s": Infinity'), "Infinity is not a JSON number"),
    ('[{"case_id": "a", "client": "c", "key": "k", "provisioning": "p", "tls": "1.2", '
     '"outcome": "ok", "duration_s": NaN}]', "NaN is not a JSON number"),
    (json.dumps(document(good_case(signed_bytes=[1]))), "'signed_bytes' must be integer"),
    (json.dumps({"format_version": 3, "cases": []}), "reads formats 1 and 2"),
    (json.dumps([good_case(outcome=7)]), "'outcome' must be one of"),
    (json.dumps({"cases": []}), "has no 'format_version'"),
])
def test_a_bad_results_file_is_one_line_not_a_traceback(tmp_path, capsys, text, why):
    path = tmp_path / "results.json"
    path.write_text(text)
    assert show_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert why in err and len(err.strip().splitlines()) == 1, err
