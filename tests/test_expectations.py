"""The data tables the matrix checks against: mechanism expectations and
known failures (parsing, matching, and that a mismatch is reported)."""

from __future__ import annotations

import pytest

from harness.errors import ConfigError
from harness.keys import KEYS, Provisioning
from harness.matrix import (
    Case,
    cases,
    expected_failure,
    load_known_failures,
    load_sign_expectations,
    sign_expectation,
)
from harness.tls import TLSVersion

PSS = {"hash": "CKM_SHA256", "mgf": "CKG_MGF1_SHA256", "salt_len": 32}


def case(client="openssl-engine", key="p256", tls=TLSVersion.TLS12, sigalgs=None):
    return Case(client, KEYS[key], Provisioning.GENERATE, tls, sigalgs)


def test_shipped_expectations_cover_the_issue_examples():
    table = load_sign_expectations()
    ecdsa = sign_expectation(case(), table)
    assert ecdsa and ecdsa.mechanism == "CKM_ECDSA" and ecdsa.input_bytes == 32
    assert ecdsa.parts == 0
    rsa = sign_expectation(case(key="rsa2048"), table)
    assert rsa and rsa.mechanism == "CKM_RSA_PKCS_PSS" and rsa.params == PSS
    forced = sign_expectation(case(key="rsa2048", sigalgs="rsa_pkcs1_sha256"), table)
    assert forced and forced.mechanism == "CKM_RSA_PKCS" and forced.input_bytes == 51
    java_forced = sign_expectation(case("java", "rsa2048", sigalgs="rsa_pkcs1_sha256"), table)
    assert java_forced and java_forced.mechanism == "CKM_SHA256_RSA_PKCS"


def test_every_default_case_has_an_expectation():
    table = load_sign_expectations()
    missing = [c.case_id for c in cases(["openssl-engine", "gnutls", "java", "java-nocombined"],
                                        tuple(KEYS.values()))
               if sign_expectation(c, table) is None]
    assert missing == []


def test_matching_sign_has_no_problems_and_a_changed_one_is_reported():
    expectation = sign_expectation(case(key="rsa2048"), load_sign_expectations())
    assert expectation is not None
    good = {"mechanism": "CKM_RSA_PKCS_PSS", "params": PSS, "parts": 0, "input_bytes": 32,
            "rv": "CKR_OK"}
    assert expectation.problems(good) == []
    changed = {**good, "mechanism": "CKM_SHA256_RSA_PKCS_PSS", "parts": 1, "input_bytes": 2900}
    problems = expectation.problems(changed)
    assert any(p.startswith("mechanism: expected 'CKM_RSA_PKCS_PSS'") for p in problems)
    assert any(p.startswith("parts:") for p in problems)
    assert expectation.problems(None) == ["no signing call recorded; expected CKM_RSA_PKCS_PSS"]
    assert expectation.problems({**good, "rv": "CKR_GENERAL_ERROR"})


def test_minimum_input_is_checked():
    java = sign_expectation(case("java", "rsa2048", sigalgs="rsa_pkcs1_sha256"),
                            load_sign_expectations())
    assert java is not None
    sign = {"mechanism": "CKM_SHA256_RSA_PKCS", "params": None, "parts": 1, "rv": "CKR_OK"}
    assert java.problems({**sign, "input_bytes": 2270}) == []
    assert java.problems({**sign, "input_bytes": 51})


def test_known_failures_match_by_client_and_key():
    known = load_known_failures()
    assert "libp11" in (expected_failure(case(key="ed25519"), known) or "")
    assert expected_failure(case("gnutls", "ed25519"), known) is None
    assert expected_failure(case(key="p256"), known) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[known]]\nclient = 'gnutls'\n", "missing \\['reason'\\]"),
        ("[[known]]\nreason = 'x'\nversion = '1'\n", "unknown keys \\['version'\\]"),
        ("[[known]\n", "cannot read"),
    ],
    ids=["no-reason", "unknown-key", "bad-toml"],
)
def test_bad_known_failures_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "known.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_known_failures(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_expectations_file_is_one_clear_error(tmp_path):
    path = tmp_path / "expect.toml"
    path.write_text("[[expect]]\nkeys = ['p256']\n")
    with pytest.raises(ConfigError, match="missing \\['mechanism'\\]"):
        load_sign_expectations(path)
