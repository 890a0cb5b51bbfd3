"""The data files the matrix checks against (harness/verdict/expectations.py):
parsing, matching, facts keyed to the versions they were measured on, and
that a record that differs is reported."""

from __future__ import annotations

import pytest

from harness.errors import ConfigError
from harness.matrix.cases import Case, cases
from harness.matrix.keys import KEYS, Provisioning
from harness.matrix.record import HandshakeRecord
from harness.tls.version import TLSVersion
from harness.verdict.expectations import (
    EXPECTED_MECHANISMS,
    KNOWN_FAILURES,
    OUTCOMES,
    CaseExpectations,
    first_match,
    load_expectations,
    load_table,
)
from harness.versions import in_range

PSS = {"hash": "CKM_SHA256", "mgf": "CKG_MGF1_SHA256", "salt_len": 32}
GOOD_PSS = {"mechanism": "CKM_RSA_PKCS_PSS", "params": PSS, "parts": 0, "input_bytes": 32,
            "rv": "CKR_OK"}
# What the facts were measured on (Debian 12 and 13), and a release no fact covers.
DEBIAN12 = {"openssl": "3.0.19", "libp11": "0.4.12", "gnutls": "3.7.9", "java": "17.0.15",
            "softhsm": "2.6.1"}
DEBIAN13 = {"openssl": "3.5.9", "libp11": "0.4.13", "gnutls": "3.8.9", "java": "21.0.13",
            "pkcs11-provider": "1.0", "softhsm": "2.6.1"}
UNMEASURED = {"openssl": "3.9.1", "libp11": "0.4.99", "gnutls": "3.9.2", "java": "99.0.1",
              "pkcs11-provider": "9.0", "softhsm": "2.6.1"}
PARTS = {"openssl-engine": ("openssl", "libp11"), "openssl-provider": ("openssl",
         "pkcs11-provider"), "gnutls": ("gnutls",), "java": ("java",),
         "java-nocombined": ("java",)}


def seen(client: str, on: dict[str, str] = DEBIAN12, **changed: str) -> dict[str, str]:
    """The versions the runner hands the verdict for a client: its parts and SoftHSM."""
    versions = {**on, **{k.replace("_", "-"): v for k, v in changed.items()}}
    return {name: versions[name] for name in (*PARTS[client], "softhsm")}


def case(client="openssl-engine", key="p256", tls=TLSVersion.TLS12, sigalgs=None):
    return Case(client, KEYS[key], Provisioning.GENERATE, tls, sigalgs)


SERVER_COUNT = 130  # what the server reports an ok TLS 1.3 CertificateVerify covers


def record(c: Case, outcome="ok", error=None, sign=None,
           signed_bytes: int | None = SERVER_COUNT) -> HandshakeRecord:
    ok = outcome == "ok"
    return HandshakeRecord(case_id=c.case_id, client=c.client, key=c.key.name,
                           provisioning=c.provisioning.value, tls=c.tls.value,
                           outcome=outcome, error=error, sign=sign,
                           signature_scheme="ecdsa_secp256r1_sha256" if ok else None,
                           negotiated_version=f"TLSv{c.tls.value}" if ok else None,
                           signed_bytes=signed_bytes if ok else None)


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
               if first_match(c, expectations.mechanisms, seen(c.client)) is None
               and expectations.failure_reason(c, seen(c.client)) is None]
    assert missing == []


def test_every_debian12_and_13_case_is_measured_and_no_later_case_is():
    expectations = CaseExpectations(check_mechanisms=True)
    clients = ["openssl-engine", "gnutls", "java", "java-nocombined"]
    for c in cases(clients, (KEYS["rsa2048"], KEYS["p256"], KEYS["p384"], KEYS["ed25519"])):
        ok = record(c, sign={"mechanism": "CKM_X", "rv": "CKR_OK"})
        assert expectations.verdict(c, ok, seen(c.client)).unmeasured == [], c.case_id
        assert expectations.verdict(c, ok, seen(c.client, DEBIAN13)).unmeasured == [], c.case_id
        later = expectations.verdict(c, ok, seen(c.client, UNMEASURED))
        assert later.unmeasured and later.problems == [], c.case_id  # no fact claims it
    provider = case("openssl-provider")  # pkcs11-provider: measured on Debian 13 only
    assert expectations.verdict(provider, record(provider),
                                seen("openssl-provider", DEBIAN13)).unmeasured == []
    assert expectations.verdict(provider, record(provider),
                                seen("openssl-provider", UNMEASURED)).unmeasured


def test_verdict_accepts_the_expected_call_and_reports_a_changed_one():
    expectations = CaseExpectations(check_mechanisms=True)
    c = case(key="rsa2048")
    here = seen(c.client)
    assert expectations.verdict(c, record(c, sign=GOOD_PSS), here).problems == []
    changed = {**GOOD_PSS, "mechanism": "CKM_SHA256_RSA_PKCS_PSS", "parts": 1,
               "input_bytes": 2900}
    verdict = expectations.verdict(c, record(c, sign=changed), here)
    assert any(p.startswith("mechanism: expected 'CKM_RSA_PKCS_PSS'") for p in verdict.problems)
    assert any(p.startswith("parts:") for p in verdict.problems)
    assert verdict.word == "failed"
    assert expectations.verdict(c, record(c, sign=None), here).problems == [
        "no signing call recorded; expected CKM_RSA_PKCS_PSS"]
    # without the default stack's table nothing is checked about the call
    assert CaseExpectations().verdict(c, record(c, sign=changed, signed_bytes=2900),
                                      here).problems == []


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
    here = seen(c.client)
    assert "libp11" in (expectations.failure_reason(c, here) or "")
    failed = expectations.verdict(c, record(c, "fail", "Unable to enumerate private keys"), here)
    assert failed.expected_failure and failed.problems == [] and failed.word == "xfailed"
    passed = expectations.verdict(c, record(c), here)
    assert passed.expected_failure is None and passed.problems[0].startswith("passed, but")
    assert passed.word == "failed"
    assert expectations.failure_reason(case("gnutls", "ed25519"), seen("gnutls")) is None


def test_known_failure_holds_only_on_the_versions_it_names():
    expectations = CaseExpectations()
    c = case(key="ed25519")
    newer = seen(c.client, libp11="0.4.13")
    assert expectations.failure_reason(c, newer) is None  # "libp11 0.4.12 ..." says nothing here
    failed = expectations.verdict(c, record(c, "fail", "Unable to enumerate private keys"), newer)
    assert failed.problems == [] and failed.word == "xfailed"  # what it saw, not a test failure
    assert failed.unmeasured == [
        "unmeasured on this version: outcome: libp11 0.4.13 (measured on 0.4.12)"]
    passed = expectations.verdict(c, record(c), newer)
    assert passed.word == "passed" and passed.unmeasured and passed.problems == []
    java = case("java", "ed25519")
    assert expectations.failure_reason(java, seen("java", java="26.0.1")) is None  # unmeasured
    assert "JDK 25" in (expectations.failure_reason(java, seen("java", java="25.0.1")) or "")
    assert "JDK 21" in (expectations.failure_reason(java, seen("java", java="21.0.8")) or "")
    # negative control: on JDK 17.0.x the reason "SunPKCS11 (JDK 17)" holds
    assert "JDK 17" in (expectations.failure_reason(java, seen("java", java="17.0.2")) or "")


def test_judge_puts_the_verdict_into_the_record():
    expectations = CaseExpectations(check_mechanisms=True)
    c = case(key="rsa2048")
    good = expectations.judge(c, record(c, sign=GOOD_PSS), seen(c.client))
    assert (good.verdict, good.problems, good.unmeasured) == ("passed", [], [])
    assert good.versions == seen(c.client)
    bad = expectations.judge(c, record(c, sign={**GOOD_PSS, "input_bytes": 48}), seen(c.client))
    assert bad.verdict == "failed" and bad.problems == [
        "input_bytes: expected 32, token saw 48"]
    other = expectations.judge(c, record(c, sign={**GOOD_PSS, "input_bytes": 48}),
                               seen(c.client, UNMEASURED))
    assert other.verdict == "passed" and other.problems == []
    assert any("openssl 3.9.1 (measured on 3.0" in n and "libp11 0.4.99" in n
               for n in other.unmeasured)
    known = case(key="ed25519")
    xfail = expectations.judge(known, record(known, "fail", "x"), seen(known.client))
    assert xfail.verdict == "xfailed" and xfail.expected and "libp11 0.4.12" in xfail.expected
    skip = expectations.judge(c, record(c, "skip", "no gnutls"), seen(c.client))
    assert skip.verdict == "skipped"


def test_undetected_version_is_unmeasured():
    expectations = CaseExpectations(check_mechanisms=True)
    c = case("gnutls")
    verdict = expectations.verdict(c, record(c, "fail", "boom"), {"gnutls": None})
    assert verdict.word == "xfailed" and "gnutls not detected" in verdict.unmeasured[0]
    # negative control: detected and measured, the same failure fails
    failed = expectations.verdict(c, record(c, "fail", "boom"), seen("gnutls"))
    assert failed.word == "failed" and failed.problems == ["handshake failed: boom"]


def test_a_fact_keyed_to_other_versions_needs_its_own_entry(tmp_path):
    table = tmp_path / "outcomes.toml"
    table.write_text('[versions]\nopenssl = "3.0"\nlibp11 = "0.4.12"\n'
                     '[[expect]]\nkeys = ["p256"]\nclients = ["openssl-engine"]\n'
                     'outcome = "fail"\nreason = "old"\nerror = "CKR_GENERAL_ERROR"\n'
                     '[[expect]]\nkeys = ["p256"]\nclients = ["openssl-engine"]\n'
                     'versions = { libp11 = ">=0.4.13,<0.5", openssl = "3.5" }\n'
                     'outcome = "fail"\nreason = "new"\nerror = "CKR_DEVICE_ERROR"\n')
    expectations = CaseExpectations()
    expectations.outcomes = load_table(table)
    c = case()
    assert expectations.failure_reason(c, seen(c.client)) == "old"
    assert expectations.failure_reason(c, seen(c.client, DEBIAN13)) == "new"
    assert expectations.failure_reason(c, seen(c.client, DEBIAN13, libp11="0.5.0")) is None


def test_expected_failure_with_the_wrong_error_is_a_problem(tmp_path):
    table = tmp_path / "outcomes.toml"
    table.write_text('[[expect]]\nkeys = ["p256"]\noutcome = "fail"\nreason = "r"\n'
                     'error = "CKR_GENERAL_ERROR"\nversions = { openssl = "3", libp11 = "0" }\n')
    expectations = CaseExpectations()
    expectations.outcomes = load_table(table)
    c = case()
    here = seen(c.client)
    right = expectations.verdict(c, record(c, "fail", "CKR_GENERAL_ERROR"), here)
    assert right.expected_failure == "r" and right.problems == []
    wrong = expectations.verdict(c, record(c, "fail", "CKR_DEVICE_REMOVED"), here)
    assert wrong.expected_failure is None and "expected 'CKR_GENERAL_ERROR'" in wrong.problems[0]


@pytest.mark.parametrize("mechanism", ["CKM_ECDSA_SHA256", "CKM_SHA256_RSA_PKCS",
                                       "CKM_SHA384_RSA_PKCS_PSS", "CKM_EDDSA"])
def test_token_and_server_must_agree_on_a_combined_mechanisms_input(mechanism):
    expectations = CaseExpectations()
    c = case("gnutls")
    sign = {"mechanism": mechanism, "parts": 1, "input_bytes": 2270, "rv": "CKR_OK"}
    agree = expectations.verdict(c, record(c, sign=sign, signed_bytes=2270), seen("gnutls"))
    assert agree.problems == []
    differ = expectations.verdict(c, record(c, sign=sign, signed_bytes=2200), seen("gnutls"))
    assert differ.word == "failed" and differ.problems == [
        f"the token signed 2270 bytes with {mechanism}, but the server's CertificateVerify "
        "covers 2200 bytes"]
    # also where no fact was measured: the two observers are no fact
    other = expectations.verdict(c, record(c, sign=sign, signed_bytes=2200),
                                 seen("gnutls", UNMEASURED))
    assert other.word == "failed" and other.unmeasured
    # no server count: the two observers cannot be compared, and an ok case
    # without the server's report is itself a problem
    assert expectations.verdict(c, record(c, sign=sign, signed_bytes=None),
                                seen("gnutls")).problems == [
        "the server did not report the negotiated version and the bytes the "
        "CertificateVerify covers"]


def test_a_digest_mechanism_is_not_compared_with_the_message():
    expectations = CaseExpectations()
    c = case("gnutls")
    sign = {"mechanism": "CKM_ECDSA", "parts": 0, "input_bytes": 32, "rv": "CKR_OK"}
    assert expectations.verdict(c, record(c, sign=sign, signed_bytes=1500),
                                seen("gnutls")).problems == []


@pytest.mark.parametrize(("version", "spec", "inside"), [
    ("3.0.19", "3.0", True), ("3.5.0", "3.0", False), ("3.0", "3.0.19", False),
    ("0.4.12", "0.4.12", True), ("0.4.13", "0.4.12", False),
    ("17.0.15", ">=17,<21", True), ("21.0.8", ">=17,<21", False), ("21", ">=21", True),
    ("3.7.9", "==3.7.9", True), ("3.7.10", "==3.7.9", False), ("1.0", ">0.9", True),
    ("2.6.1", "*", True), ("unknown", "*", False), ("17.0.15+6-Debian-1deb12u1", "17", True),
])
def test_version_ranges(version, spec, inside):
    assert in_range(version, spec) is inside


def test_shipped_facts_name_the_versions_they_were_measured_on():
    """Every shipped table is keyed; a reason naming a version is keyed to it."""
    for path in [KNOWN_FAILURES, EXPECTED_MECHANISMS, *sorted(OUTCOMES.glob("*.toml"))]:
        table = load_table(path)
        assert {"openssl", "libp11", "gnutls", "java"} <= set(table.versions), path
        for entry in table:
            for text, component in (("libp11 0.4.12", "libp11"), ("JDK 17", "java")):
                if text in (entry.reason or ""):
                    version = text.split()[-1]
                    assert entry.versions[component] == version, (path, entry.reason)


def test_file_versions_apply_to_entries_and_entries_override_them(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[versions]\ngnutls = "3.7"\njava = "17"\n'
                    '[[expect]]\nkeys = ["p256"]\n'
                    '[[expect]]\nkeys = ["p384"]\nversions = { java = ">=21" }\n')
    first, second = load_table(path)
    assert first.versions == {"gnutls": "3.7", "java": "17"}
    assert second.versions == {"gnutls": "3.7", "java": ">=21"}


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[expect]]\noutcome = "fail"\n', "needs a 'reason'"),
        ("[[expect]]\nreason = 'x'\nversion = '1'\n", "unknown keys \\['version'\\]"),
        ('[[expect]]\noutcome = "maybe"\n', "outcome must be 'ok' or 'fail'"),
        ("[[expect]\n", "cannot read"),
        ('[[expect]]\nversions = { libp12 = "1" }\n', "unknown components \\['libp12'\\]"),
        ('[[expect]]\nversions = { java = "seventeen" }\n', "'seventeen' is not VERSION"),
        ('[versions]\njava = ">=17,<<21"\n', "\\[versions\\]: version range"),
        ('[versions]\njava = 17\n', "is not a text"),
        ('version = "1"\n', "unknown top-level keys \\['version'\\]"),
    ],
    ids=["no-reason", "unknown-key", "bad-outcome", "bad-toml", "unknown-component",
         "bad-range", "bad-file-range", "range-not-text", "unknown-top-level"],
)
def test_bad_data_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "table.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_expectations(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --- `p11tls facts`: what a run measured, keyed to its versions ------------------------


def judged_on(versions_of, outcome="ok", sign=None, key="p256", error=None):
    """Judged records of one case per client, as the runner makes them."""
    expectations = CaseExpectations(check_mechanisms=True)
    out = []
    for client in ("openssl-engine", "gnutls"):
        c = case(client, key)
        r = record(c, outcome, error, sign)
        r.module = {"embedded": True}
        out.append(expectations.judge(c, r, versions_of(client)))
    return out


def test_facts_of_an_unmeasured_run_load_back_and_make_it_measured(tmp_path):
    from harness.commands.facts import new_facts, render_toml

    sign = {"mechanism": "CKM_ECDSA", "params": None, "parts": 0, "input_bytes": 32,
            "rv": "CKR_OK"}
    records = judged_on(lambda client: seen(client, UNMEASURED), sign=sign)
    assert all(r.unmeasured for r in records)
    files, notes = new_facts(records)
    assert notes == [] and list(files) == ["expected_mechanisms.toml"]
    entries = files["expected_mechanisms.toml"]  # one per client: their versions differ
    assert sorted(e["versions"]["softhsm"] for e in entries) == ["2.6.1", "2.6.1"]
    assert {"openssl": "3.9.1", "libp11": "0.4.99", "softhsm": "2.6.1"} in [
        e["versions"] for e in entries]
    path = tmp_path / "expected_mechanisms.toml"
    path.write_text(EXPECTED_MECHANISMS.read_text()
                    + render_toml(files["expected_mechanisms.toml"], "review"))
    expectations = CaseExpectations(check_mechanisms=True)
    expectations.mechanisms = load_table(path)
    for client in ("openssl-engine", "gnutls"):
        c = case(client)
        now = expectations.verdict(c, record(c, sign=sign), seen(client, UNMEASURED))
        assert [n for n in now.unmeasured if "signing call" in n] == [], client
        wrong = expectations.verdict(c, record(c, sign={**sign, "input_bytes": 48}),
                                     seen(client, UNMEASURED))
        assert wrong.word == "failed"  # the new fact is checked like any other


def test_facts_of_a_measured_run_are_none_and_failures_need_a_reason():
    from harness.commands.facts import new_facts

    sign = {"mechanism": "CKM_ECDSA", "params": None, "parts": 0, "input_bytes": 32,
            "rv": "CKR_OK"}
    assert new_facts(judged_on(lambda client: seen(client), sign=sign)) == ({}, [])
    failed = judged_on(lambda client: seen(client, UNMEASURED), "fail",
                       {**sign, "rv": "CKR_GENERAL_ERROR"}, error="CKR_GENERAL_ERROR")
    files, _ = new_facts(failed)
    (entry, *_) = files["known_failures.toml"]
    assert entry["outcome"] == "fail" and entry["reason"].startswith("TODO")
    assert entry["error"] == "CKR_GENERAL_ERROR" and entry["rv"] == "CKR_GENERAL_ERROR"


def test_profile_unmeasured_here_does_not_fall_back_to_the_default_stack(tmp_path):
    """A profile changes what the token offers: where its table was measured on
    other versions, the default stack's signing calls must not judge the case."""
    table = tmp_path / "no-pss.toml"
    table.write_text('[versions]\ngnutls = "3.7.9"\n'
                     '[[expect]]\nclients = ["gnutls"]\nkeys = ["rsa2048"]\ntls = ["1.2"]\n'
                     'mechanism = "CKM_RSA_PKCS"\ninput_bytes = 51\n')
    expectations = CaseExpectations(check_mechanisms=True)
    expectations.outcomes = load_table(table)
    c = case("gnutls", "rsa2048")
    pkcs1 = {"mechanism": "CKM_RSA_PKCS", "params": None, "parts": 0, "input_bytes": 51,
             "rv": "CKR_OK"}
    there = expectations.verdict(c, record(c, sign=pkcs1), seen("gnutls", DEBIAN13))
    assert there.problems == [] and there.unmeasured and there.word == "passed"
    # control: where the profile's table holds, its own entry judges the call
    wrong = {**pkcs1, "input_bytes": 32}
    here = expectations.verdict(c, record(c, sign=wrong), seen("gnutls"))
    assert here.problems == ["input_bytes: expected 51, token saw 32"]


def test_an_entry_for_another_release_leaves_this_releases_no_entry_rule(tmp_path):
    """A failure measured on Debian 13 only: on Debian 12, where the file's
    "cases with no entry succeed" was measured too, the case must succeed."""
    table = tmp_path / "known.toml"
    table.write_text('[versions]\ngnutls = "3.7.9"\n[[also_measured_on]]\ngnutls = "3.8"\n'
                     '[[expect]]\nclients = ["gnutls"]\nkeys = ["p256"]\n'
                     'versions = { gnutls = "3.8" }\noutcome = "fail"\nreason = "only on 3.8"\n')
    expectations = CaseExpectations()
    expectations.outcomes = load_table(table)
    c = case("gnutls")
    assert expectations.failure_reason(c, seen("gnutls", DEBIAN13)) == "only on 3.8"
    on12 = expectations.verdict(c, record(c, "fail", "boom"), seen("gnutls"))
    assert on12.unmeasured == [] and on12.word == "failed"  # must succeed on 3.7.9
    later = expectations.verdict(c, record(c, "fail", "boom"), seen("gnutls", UNMEASURED))
    assert later.unmeasured and later.word == "xfailed"  # control: measured nowhere
