"""Diagnosis rules: each with a positive case and a negative control; ranking."""

from __future__ import annotations

from pathlib import Path

import pytest
from explain_helpers import DATA, RECORDS, _pasted, rules_found, sign_records, write_records

from harness.errors import HarnessError
from harness.explain.explanation import explain_file
from harness.explain.rules import RULE_NAMES

# --- rules: each with a positive case and a negative control --------------------------------

RULE_CASES = [
    # (rule, positive source, negative source)
    ("combined-mechanism-large-input", "data:seed001-opensc.log", "records:combined_tls13_fail"),
    ("combined-mechanism-large-input", "records:combined_tls12_fail", "spy:multipart_ok"),
    ("tls13-rsa-without-pss", "data:pkcs11-logger-rsa-no-pss.log", "records:rsa_with_pss"),
    ("tls13-rsa-without-pss", "records:rsa_without_pss", "spy:keygen_mechanisms"),
    ("import-refused", "data:seed000-spy.log", "spy:import_ok"),
    ("import-refused", "data:seed000-opensc.log", "spy:import_nologin"),
    ("openpgp-import", "data:seed000-opensc.log", "spy:import_nologin"),
    ("openpgp-import", "data:seed000-spy.log", "spy:import_ok"),
    ("mechanism-invalid", "spy:mech_invalid", "spy:ecdsa_ok"),
    ("mechanism-invalid", "p11kit:mech_invalid", "p11kit:ecdsa_ok"),
    ("pin", "spy:wrong_pin", "spy:good_login"),
    ("pin", "p11kit:wrong_pin", "p11kit:import_ok"),
    ("apdu-transmit", "data:seed001-opensc.log", "opensc:real"),
    ("ecdsa-input-too-long", "spy:ecdsa_long", "spy:ecdsa_ok"),
    ("ecdsa-input-too-long", "records:ecdsa_p256_sha384", "records:ecdsa_p384_sha384"),
    ("multipart-refused", "records:multipart_refused", "spy:multipart_ok"),
    ("multipart-refused", "spy:pss_salt", "spy:ecdsa_ok"),
    ("multipart-refused", "data:spy-opensc-0.20-multipart.log", "spy:ecdsa48"),
    ("ecdsa-input-over-order", "emulated:ecdsa_over_order", "spy:ecdsa48"),
    ("combined-mechanism-small-input", "emulated:combined_small", "emulated:limit_1223"),
    ("input-size-limit", "emulated:limit_1223", "emulated:limit_ok"),
    ("rsa-x509-refused", "emulated:x509_hidden", "spy:multipart_ok"),
    ("pss-params", "spy:pss_salt", "spy:multipart_ok"),
    ("ec-import-without-point", "emulated:import_incomplete", "data:seed000-spy.log"),
    ("card-status", "data:picohsm-6f00-opensc.log", "data:seed001-opensc.log"),
    ("pin-flags", "emulated:pin_flags", "records:token_flags_clean"),
    ("failed-call", "emulated:sign_fails", "spy:ecdsa_ok"),
    ("sunpkcs11-disabled", "data:sunpkcs11-showinfo-spy.log", "spy:ecdsa_ok"),
    ("tpm2-import", "tpm2:import", "spy:import_nologin"),
    ("tpm2-import", "tpm2:import", "data:seed000-spy.log"),
    ("tpm2-lockout", "tpm2:lockout", "spy:wrong_pin"),
    ("tpm2-lockout", "data:heldout/tpm2-stderr-lockout.log", "tpm2:pss_ok"),
    ("tpm2-engine-session", "tpm2:engine", "tpm2:lockout"),
    ("malformed-ec-point", "tpm2:p521.jsonl", "tpm2:p256.jsonl"),
    ("malformed-ec-point", "tpm2:p521", "tpm2:p256"),
    ("pss-salt-server", "tpm2+server:pss_ok.spy", "tpm2:pss_ok.spy"),
    ("pss-salt-server", "tpm2+server:pss_ok.jsonl", "spy+server:ecdsa_ok"),
]


def _source(spec: str, request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    kind, name = spec.split(":", 1)
    if kind == "data":
        return DATA / name
    if kind == "records":
        return write_records(tmp_path / f"{name}.jsonl", RECORDS[name])
    if kind == "opensc":
        return request.getfixturevalue("opensc_debug_log")
    if kind == "emulated":
        return request.getfixturevalue("emulated_logs")[name]
    if kind == "tpm2+server":  # a real client log with the (hand-written) server's error
        return _pasted(request.getfixturevalue("tpm2_logs"), tmp_path, name,
                       "openssl-server-pss-salt.txt")
    if kind == "spy+server":
        return _pasted(request.getfixturevalue("spy_logs"), tmp_path, name,
                       "openssl-server-pss-salt.txt")
    return request.getfixturevalue(f"{kind}_logs")[name]


@pytest.mark.parametrize(
    ("rule", "source", "expected"),
    [
        pytest.param(
            rule, source, expected, id=f"{rule}-{'positive' if expected else 'negative'}-{source}"
        )
        for rule, positive, negative in RULE_CASES
        for source, expected in ((positive, True), (negative, False))
    ],
)
def test_rule(rule, source, expected, request, tmp_path):
    if source == "tpm2:engine" and "engine" not in request.getfixturevalue("tpm2_logs"):
        pytest.skip("the libp11 engine logs in to tpm2-pkcs11 on this release: no failure "
                    "to explain (the held-out engine log covers the rule)")
    found = rules_found(_source(source, request, tmp_path))
    assert (rule in found) is expected, found


def test_every_rule_has_positive_and_negative_cases():
    assert {case[0] for case in RULE_CASES} == set(RULE_NAMES)
    assert len(RULE_NAMES) == 24


def test_pin_retry_after_incorrect_is_reported_once(spy_logs):
    explanation = explain_file(spy_logs["wrong_pin"])
    pins = [f for f in explanation.findings if f.rule == "pin"]
    assert len(pins) == 3  # two wrong PINs, one retry
    retry = [f for f in pins if "tried again" in f.summary]
    assert len(retry) == 1 and explanation.calls[retry[0].call].fn == "C_Login"


def test_findings_point_at_the_failing_call():
    explanation = explain_file(DATA / "seed001-opensc.log")
    assert explanation.first_failure == 1
    assert {f.rule for f in explanation.findings} == {
        "combined-mechanism-large-input",
        "apdu-transmit",
    }
    assert all(f.call == 1 for f in explanation.findings)
    (combined,) = [f for f in explanation.findings if f.rule == "combined-mechanism-large-input"]
    assert "6039 bytes" in combined.summary
    for workaround in ("disabledMechanisms", "sc-hsm-embedded", "hash on the host"):
        assert workaround in combined.hint



# --- generalising: every failure explained, probes ranked last, cut logs ----------------


def test_every_failing_call_gets_a_finding(spy_logs, emulated_logs):
    from harness.explain.explanation import parse_file as parse
    from harness.explain.rules import failed

    logs = [*spy_logs.values(), *emulated_logs.values(), *sorted(DATA.glob("*.log"))]
    for log in logs:
        parsed = parse(log)
        explanation = explain_file(log)
        failing = sum(1 for c in parsed.calls if failed(c))
        assert len({f.call for f in explanation.findings}) >= failing > -1, log.name
    # Control: a log without failures has no findings.
    assert explain_file(spy_logs["ecdsa_ok"]).findings == ()


def test_pico_hsm_debug_log_ranks_the_cause_first_and_ignores_noise():
    explanation = explain_file(DATA / "picohsm-6f00-opensc.log")
    first = explanation.calls[explanation.first_failure]
    assert (first.fn, first.status_word, first.reader_error) == ("C_SignFinal", "6F00", None)
    assert explanation.findings[0].rule == "combined-mechanism-large-input"
    card = next(f for f in explanation.findings if f.rule == "card-status")
    assert "6F 00" in card.summary and "no precise diagnosis" in card.summary
    # SCardControl 0x8010001f and the ending C_Finalize make no finding at all
    assert not any("SCardControl" in f.summary for f in explanation.findings)
    assert all(explanation.calls[f.call].fn != "C_Finalize" for f in explanation.findings)
    # Control: a real transmit failure is still a card-connection finding.
    assert "apdu-transmit" in rules_found(DATA / "seed001-opensc.log")


def test_harmless_probe_ranks_after_the_real_failure(tmp_path):
    recs = [
        {"fn": "C_FindObjectsInit", "seq": 1, "rv": "CKR_ATTRIBUTE_VALUE_INVALID"},
        *sign_records("CKM_ECDSA", 0x1041, [32], "CKR_OK"),
        {"fn": "C_SignInit", "seq": 9, "rv": "CKR_OK", "session": 1,
         "mechanism": {"name": "CKM_ECDSA", "value": 0x1041}},
        {"fn": "C_Sign", "seq": 10, "rv": "CKR_FUNCTION_FAILED", "session": 1, "in_len": 32},
    ]
    explanation = explain_file(write_records(tmp_path / "probe.jsonl", recs))
    assert explanation.calls[explanation.first_failure].fn == "C_Sign"
    assert [f.harmless for f in explanation.findings] == [False, True]
    assert explanation.calls[explanation.findings[1].call].fn == "C_FindObjectsInit"
    # Control: without the successful signature the same failure is not a probe.
    alone = explain_file(write_records(tmp_path / "alone.jsonl", recs[:1]))
    assert [f.harmless for f in alone.findings] == [False]



@pytest.mark.parametrize("name", ["seed000-spy.log", "seed001-opensc.log",
                                  "picohsm-6f00-opensc.log", "pkcs11-logger-rsa-no-pss.log"])
def test_a_log_cut_anywhere_still_explains(name, tmp_path):
    text = (DATA / name).read_text()
    cut = tmp_path / name
    for end in range(len(text) // 3, len(text), max(1, len(text) // 40)):
        cut.write_text(text[:end])
        try:
            explanation = explain_file(cut)
        except HarnessError as exc:
            assert "no PKCS#11 calls" in str(exc) or "unknown log format" in str(exc)
            continue
        assert explanation.total_calls >= 1


PROBE_LOG = """*************** OpenSC PKCS#11 spy *****************
0: C_GetFunctionList
Returned:  0 CKR_OK

1: C_Initialize
Returned:  0 CKR_OK

2: C_GetMechanismInfo
[in] slotID = 0x0
[in] type = CKM_ECDSA_SHA256
Returned:  112 CKR_MECHANISM_INVALID
{more}
9: C_Finalize
Returned:  0 CKR_OK
"""
SIGNED = """
3: C_SignInit
[in] hSession = 0x1
pMechanism->type=CKM_ECDSA
[in] hKey = 0x2
Returned:  0 CKR_OK

4: C_Sign
[in] hSession = 0x1
[in] pData[ulDataLen] 00007ffd2709bdf0 / 32
Returned:  0 CKR_OK
"""


def test_a_failed_probe_with_nothing_after_it_is_named_not_blamed(tmp_path):
    path = tmp_path / "probe.log"
    path.write_text(PROBE_LOG.format(more=""))
    explanation = explain_file(path)
    assert explanation.first_failure is None  # nothing failed in a way that matters
    (probe,) = explanation.findings
    assert probe.rule == "probe-only" and probe.harmless
    assert explanation.calls[probe.call].fn == "C_GetMechanismInfo"
    # Control: the same probe followed by a successful signature is just a probe.
    path.write_text(PROBE_LOG.format(more=SIGNED))
    assert explain_file(path).findings == ()
