"""The data files the matrix checks against (harness/expectations.py):
parsing, matching, and that a record that differs is reported."""

from __future__ import annotations

import pytest

from harness.errors import ConfigError
from harness.expectations import (
    EXPECTED_MECHANISMS,
    CaseExpectations,
    first_match,
    load_expectations,
)
from harness.keys import KEYS, Provisioning
from harness.matrix import Case, cases
from harness.record import HandshakeRecord
from harness.tls import TLSVersion

PSS = {"hash": "CKM_SHA256", "mgf": "CKG_MGF1_SHA256", "salt_len": 32}
GOOD_PSS = {"mechanism": "CKM_RSA_PKCS_PSS", "params": PSS, "parts": 0, "input_bytes": 32,
            "rv": "CKR_OK"}


def case(client="openssl-engine", key="p256", tls=TLSVersion.TLS12, sigalgs=None):
    return Case(client, KEYS[key], Provisioning.GENERATE, tls, sigalgs)


def record(c: Case, outcome="ok", error=None, sign=None) -> HandshakeRecord:
    return HandshakeRecord(case_id=c.case_id, client=c.client, key=c.key.name,
                           provisioning=c.provisioning.value, tls=c.tls.value,
                           outcome=outcome, error=error, sign=sign)


def test_shipped_mechanisms_cover_the_issue_examples():
    table = load_expectations(EXPECTED_MECHANISMS)
    ecdsa = first_match(case(), table)
    assert ecdsa and (ecdsa.mechanism, ecdsa.input_bytes, ecdsa.parts) == ("CKM_ECDSA", 32, 0)
    rsa = first_match(case(key="rsa2048"), table)
    assert rsa and rsa.mechanism == "CKM_RSA_PKCS_PSS" and rsa.params == PSS
    forced = first_match(case(key="rsa2048", sigalgs="rsa_pkcs1_sha256"), table)
    assert forced and forced.mechanism == "CKM_RSA_PKCS" and forced.input_bytes == 51
    java = first_match(case("java", "rsa2048", sigalgs="rsa_pkcs1_sha256"), table)
    assert java and java.mechanism == "CKM_SHA256_RSA_PKCS"


def test_every_case_of_the_full_matrix_has_a_mechanism_or_a_known_failure():
    expectations = CaseExpectations(check_mechanisms=True)
    missing = [c.case_id for c in cases(["openssl-engine", "gnutls", "java", "java-nocombined"],
                                        tuple(KEYS.values()))
               if first_match(c, expectations.mechanisms) is None
               and expectations.failure_reason(c) is None]
    assert missing == []


def test_verdict_accepts_the_expected_call_and_reports_a_changed_one():
    expectations = CaseExpectations(check_mechanisms=True)
    c = case(key="rsa2048")
    assert expectations.verdict(c, record(c, sign=GOOD_PSS)).problems == []
    changed = {**GOOD_PSS, "mechanism": "CKM_SHA256_RSA_PKCS_PSS", "parts": 1,
               "input_bytes": 2900}
    problems = expectations.verdict(c, record(c, sign=changed)).problems
    assert any(p.startswith("mechanism: expected 'CKM_RSA_PKCS_PSS'") for p in problems)
    assert any(p.startswith("parts:") for p in problems)
    assert expectations.verdict(c, record(c, sign=None)).problems == [
        "no signing call recorded; expected CKM_RSA_PKCS_PSS"]
    # without the default stack's table nothing is checked about the call
    assert CaseExpectations().verdict(c, record(c, sign=changed)).problems == []


def test_minimum_input_is_checked():
    java = first_match(case("java", "rsa2048", sigalgs="rsa_pkcs1_sha256"),
                       load_expectations(EXPECTED_MECHANISMS))
    assert java is not None
    sign = {"mechanism": "CKM_SHA256_RSA_PKCS", "params": None, "parts": 1, "rv": "CKR_OK"}
    assert java.sign_problems({**sign, "input_bytes": 2270}) == []
    assert java.sign_problems({**sign, "input_bytes": 51})


def test_known_failure_is_expected_only_when_it_fails():
    expectations = CaseExpectations()
    c = case(key="ed25519")
    assert "libp11" in (expectations.failure_reason(c) or "")
    failed = expectations.verdict(c, record(c, "fail", "Unable to enumerate private keys"))
    assert failed.expected_failure and failed.problems == []
    passed = expectations.verdict(c, record(c))
    assert passed.expected_failure is None and passed.problems[0].startswith("passed, but")
    assert expectations.failure_reason(case("gnutls", "ed25519")) is None


def test_expected_failure_with_the_wrong_error_is_a_problem(tmp_path):
    table = tmp_path / "outcomes.toml"
    table.write_text('[[expect]]\nkeys = ["p256"]\noutcome = "fail"\nreason = "r"\n'
                     'error = "CKR_GENERAL_ERROR"\n')
    expectations = CaseExpectations()
    expectations.outcomes = load_expectations(table)
    c = case()
    right = expectations.verdict(c, record(c, "fail", "CKR_GENERAL_ERROR"))
    assert right.expected_failure == "r" and right.problems == []
    wrong = expectations.verdict(c, record(c, "fail", "CKR_DEVICE_REMOVED"))
    assert wrong.expected_failure is None and "expected 'CKR_GENERAL_ERROR'" in wrong.problems[0]


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[expect]]\noutcome = "fail"\n', "needs a 'reason'"),
        ("[[expect]]\nreason = 'x'\nversion = '1'\n", "unknown keys \\['version'\\]"),
        ('[[expect]]\noutcome = "maybe"\n', "outcome must be 'ok' or 'fail'"),
        ("[[expect]\n", "cannot read"),
    ],
    ids=["no-reason", "unknown-key", "bad-outcome", "bad-toml"],
)
def test_bad_data_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "table.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_expectations(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
