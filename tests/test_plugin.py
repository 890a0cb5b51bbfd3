"""The pytest plugin, run for real in a child pytest (pytester): markers and
ids, the reports it writes, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

MATRIX_TEST = (Path(__file__).parent / "test_matrix.py").read_text()


@pytest.fixture
def matrix(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_matrix=MATRIX_TEST)
    return pytester


def run(pytester: pytest.Pytester, *args: str, env: dict[str, str] | None = None):
    """A child pytest; `env` is added to its environment."""
    mp = pytest.MonkeyPatch()
    try:
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)
    finally:
        mp.undo()



def test_marker_selects_only_tls12_cases_and_ids_are_stable(matrix):
    result = run(matrix, "--collect-only", "-q", "-m", "tls12 and gnutls")
    ids = sorted(line.split("[")[1].rstrip("]") for line in result.outlines if "[" in line)
    assert ids == sorted([f"gnutls-{k}-{p}-tls12" for k in ("rsa2048", "p256", "p384")
                          for p in ("generate", "import")]
                         + ["gnutls-rsa2048-generate-tls12-rsa_pkcs1_sha256"])
    everything = run(matrix, "--collect-only", "-q")
    assert any("tls13" in line for line in everything.outlines)  # negative control


def test_markers_are_registered_for_strict_markers(matrix):
    result = run(matrix, "--markers")
    for marker in ("tls12", "tls13", "rsa", "ecdsa", "eddsa", "generate", "import",
                   "openssl_engine", "openssl_provider", "gnutls"):
        result.stdout.fnmatch_lines([f"@pytest.mark.{marker}:*"])


def test_run_writes_results_json_and_prints_the_matrix(matrix):
    result = run(matrix, "-m", "p256 or ecdsa", "-k", "p256 and openssl-engine",
                 "--junitxml=junit.xml")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*PKCS#11 TLS client-auth matrix*",
                                 "p256*generate*ok ECDSA 32B*"])
    records = json.loads((matrix.path / "reports" / "results.json").read_text())["cases"]
    assert len(records) == 4
    for record in records:
        for field in ("client", "key", "provisioning", "tls", "outcome", "negotiated_version",
                      "cipher", "signature_scheme", "error", "module", "profile"):
            assert field in record
        assert record["outcome"] == "ok" and record["profile"] is None
        assert record["module"]["model"] == "SoftHSM v2"
    assert {r["tls"] for r in records} == {"1.2", "1.3"}
    assert (matrix.path / "junit.xml").is_file()


def test_report_header_names_module_and_clients(matrix, softhsm_store):
    result = run(matrix, "--collect-only", "-q", "-m", "tls12", "-v", "--p11-wide")
    result.stdout.fnmatch_lines(["p11tls module: embedded default: throw-away SoftHSM2*",
                                 "p11tls clients: OpenSSL*gnutls-cli*Java *python-pkcs11*"])
    # fitted to the width (80 in a pipe), the same text on continuation lines
    fitted = run(matrix, "--collect-only", "-q", "-m", "tls12", "-v").stdout.lines
    first = next(i for i, line in enumerate(fitted) if line.startswith("p11tls clients:"))
    last = next(i for i, line in enumerate(fitted) if "python-pkcs11" in line)
    assert first < last and all(len(line) <= 80 for line in fitted[first:last + 1])
    store, token = softhsm_store
    own = run(matrix, "--collect-only", "-q", "-v", "--p11-wide", f"--p11-module={store.module}",
              f"--p11-token-label={token.label}", f"--p11-pin={token.pin}", env=store.env)
    header = (f"p11tls module: {store.module} (Implementation of PKCS11*), "
              "token 'spare' (SoftHSM v2 by SoftHSM project, firmware *)")
    own.stdout.fnmatch_lines([header])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--p11-module=/nonexistent/libnone.so", "--p11-token-label=x", "--p11-pin=1"],
         "*PKCS#11 module /nonexistent/libnone.so does not exist*"),
        (["--p11-keys=rsa1024"], "*unknown key type 'rsa1024'*"),
        (["--p11-clients=wolfssl"], "*unknown client wolfssl*"),
    ],
    ids=["missing-module", "unknown-key", "unknown-client"],
)
def test_bad_options_are_one_line_usage_errors(matrix, args, message):
    result = run(matrix, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_file_that_is_not_a_module_stops_the_run_with_one_line(matrix, tmp_path):
    fake = tmp_path / "libfake.so"
    fake.write_text("not a library")
    result = run(matrix, f"--p11-module={fake}", "--p11-token-label=x", "--p11-pin=1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {fake} is not a loadable PKCS#11 module*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_unknown_token_label_lists_the_tokens_present(matrix, softhsm_store):
    store, token = softhsm_store
    result = run(matrix, f"--p11-module={store.module}", "--p11-token-label=absent",
                 f"--p11-pin={token.pin}", env=store.env)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: no token labelled 'absent'*tokens present: 'spare' (*"])


def test_wrong_pin_is_sent_once_and_never_retried(matrix, softhsm_store, pkcs11_spy, tmp_path):
    store, token = softhsm_store
    spy_log = tmp_path / "spy.log"
    env = {**store.env, "PKCS11SPY": str(store.module), "PKCS11SPY_OUTPUT": str(spy_log)}
    result = run(matrix, f"--p11-module={pkcs11_spy}", f"--p11-token-label={token.label}",
                 "--p11-pin=0000", "-m", "ecdsa", env=env)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: token 'spare' refused the PIN*will not be retried*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    calls = spy_log.read_text()
    assert calls.count("C_Login") == 1
    assert "CKR_PIN_INCORRECT" in calls
    # negative control: the right PIN passes through the same spy and logs in once
    spy_log.unlink()
    good = run(matrix, f"--p11-module={pkcs11_spy}", f"--p11-token-label={token.label}",
               f"--p11-pin={token.pin}", "-k", "openssl-engine and p256 and generate and tls13",
               env=env)
    good.assert_outcomes(passed=1)


def test_user_token_keeps_its_objects_and_loses_ours(matrix, softhsm_store):
    store, token = softhsm_store
    import subprocess

    def objects() -> str:
        return subprocess.run(
            ["pkcs11-tool", "--module", str(store.module), "--token-label", token.label,
             "--login", "--pin", token.pin, "--list-objects"],
            capture_output=True, text=True, env={**os.environ, **store.env}, check=True,
        ).stdout

    subprocess.run(
        ["pkcs11-tool", "--module", str(store.module), "--token-label", token.label,
         "--login", "--pin", token.pin, "--keypairgen", "--key-type", "EC:prime256v1",
         "--label", "users-key", "--id", "42"],
        capture_output=True, env={**os.environ, **store.env}, check=True,
    )
    result = run(matrix, f"--p11-module={store.module}", f"--p11-token-label={token.label}",
                 f"--p11-pin={token.pin}", "-k", "p256 and gnutls", env=store.env)
    result.assert_outcomes(passed=4)
    left = objects()
    assert "users-key" in left
    assert "p11tls-" not in left


def test_wrong_pin_reaches_the_token_once_with_xdist_workers(matrix, softhsm_store, pkcs11_spy,
                                                             tmp_path):
    store, token = softhsm_store
    spy_log = tmp_path / "spy.log"
    env = {**store.env, "PKCS11SPY": str(store.module), "PKCS11SPY_OUTPUT": str(spy_log)}
    result = run(matrix, "-n", "2", f"--p11-module={pkcs11_spy}",
                 f"--p11-token-label={token.label}", "--p11-pin=0000", env=env)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*refused the PIN*will not be retried*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert spy_log.read_text().count("C_Login") == 1


@pytest.mark.parametrize("args, message", [
    (["--p11-clients=gnutls"], "*gnutls was asked for but cannot run: gnutls-cli not found*"),
    (["--java=/nonexistent/jdk"], "*java was asked for but cannot run*/nonexistent/jdk*"),
    (["--java-p11-config=library = /other.so"], "*the harness sets library itself*"),
], ids=["named-client-missing", "named-jdk-missing", "java-config-owned-keyword"])
def test_clients_that_cannot_run_as_asked_stop_the_run_at_once(matrix, tmp_path, args, message):
    env = {"PATH": str(tmp_path)} if "gnutls" in args[0] else None  # no gnutls-cli on PATH
    result = run(matrix, *args, env=env)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_eddsa_cases_run_last(matrix):
    result = run(matrix, "--collect-only", "-q", "--p11-keys=all")
    ids = [line for line in result.outlines if "::test_handshake[" in line]
    first_eddsa = next(i for i, line in enumerate(ids) if "ed25519" in line)
    assert all("ed25519" in line for line in ids[first_eddsa:])
    assert first_eddsa > 0 and "ed25519" not in ids[0]


# --- one verdict everywhere: pytest's --------------------------------------------------


def reports_of(pytester: pytest.Pytester) -> tuple[dict[str, dict], str, str]:
    """results.json by case id, matrix.md and matrix.html of a child run."""
    reports = pytester.path / "reports"
    records = json.loads((reports / "results.json").read_text())["cases"]
    return ({r["case_id"]: r for r in records}, (reports / "matrix.md").read_text(),
            (reports / "matrix.html").read_text())


def show(pytester: pytest.Pytester):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "harness.cli", "show",
                           str(pytester.path / "reports" / "results.json")],
                          capture_output=True, text=True, timeout=60)


FORCED_JAVA = "java-rsa2048-generate-tls12-rsa_pkcs1_sha256"


def test_failed_expectation_after_a_good_handshake_is_failed_in_every_report(matrix):
    # SunPKCS11 without CKM_SHA256_RSA_PKCS signs a DigestInfo with CKM_RSA_PKCS:
    # the handshake works, the measured fact (the combined mechanism) does not hold
    result = run(matrix, "--p11-clients", "java", "-k", "rsa2048", "--p11-wide",  # whole lines
                 "--java-p11-config", "disabledMechanisms = { CKM_SHA256_RSA_PKCS }")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines([
        "*F PKCS1 51B*", "java: 4 ok, 1 failed (checks failed, RSA_PKCS 51 B)",
        "4 passed, 1 failed, 0 xfailed, 0 skipped",
        f"FAILED {FORCED_JAVA}: mechanism: expected 'CKM_SHA256_RSA_PKCS', token saw "
        "'CKM_RSA_PKCS'*"])
    cases, markdown, html = reports_of(matrix)
    failed = cases[FORCED_JAVA]
    assert failed["outcome"] == "ok" and failed["verdict"] == "failed"
    assert "mechanism: expected 'CKM_SHA256_RSA_PKCS', token saw 'CKM_RSA_PKCS'" in failed[
        "problems"]
    assert {r["verdict"] for k, r in cases.items() if k != FORCED_JAVA} == {"passed"}
    assert "❌ failed RSA_PKCS 51B [1]" in markdown
    assert "4 passed, 1 failed, 0 xfailed, 0 skipped" in markdown
    assert f'data-case="{FORCED_JAVA}" data-state="fail"' in html
    shown = show(matrix)
    assert shown.returncode == 1 and "4 passed, 1 failed" in shown.stdout
    # negative control: the same cases with SunPKCS11 as configured all pass
    clean = run(matrix, "--p11-clients", "java", "-k", "rsa2048")
    clean.assert_outcomes(passed=5)
    clean.stdout.fnmatch_lines(["5 passed, 0 failed, 0 xfailed, 0 skipped"])
    cases, _, _ = reports_of(matrix)
    assert cases[FORCED_JAVA]["verdict"] == "passed" and cases[FORCED_JAVA]["problems"] == []
    shown = show(matrix)
    assert shown.returncode == 0 and "5 passed, 0 failed" in shown.stdout


# the child run reads its facts from this directory instead of the shipped one
FACTS_CONFTEST = """
from pathlib import Path
import harness.verdict.expectations as expectations
expectations.EXPECTED_MECHANISMS = Path(__file__).parent / "mechanisms.toml"
"""
GNUTLS_P256 = """\
[versions]
gnutls = "{gnutls}"
softhsm = "2.6"
[[expect]]
clients = ["gnutls"]
keys = ["p256"]
mechanism = "CKM_ECDSA"
parts = 0
input_bytes = 32
"""


def test_case_whose_facts_are_for_another_version_is_reported_unmeasured(matrix):
    from harness.clients.gnutls import GnuTLSClient

    installed = GnuTLSClient().components()["gnutls"]
    assert installed
    matrix.makeconftest(FACTS_CONFTEST)
    (matrix.path / "mechanisms.toml").write_text(GNUTLS_P256.format(gnutls="99.1"))
    args = ("--p11-clients", "gnutls", "-k", "p256 and generate", "--p11-wide")  # whole lines
    result = run(matrix, *args)
    result.assert_outcomes(passed=2)  # not a test failure
    result.stdout.fnmatch_lines([
        "*? ECDSA 32B*",
        "2 passed, 0 failed, 0 xfailed, 0 skipped; 2 unmeasured on this version",
        f"2 cases unmeasured on this version: signing call: gnutls {installed} "
        "(measured on 99.1)"])
    cases, markdown, html = reports_of(matrix)
    for record in cases.values():
        assert record["verdict"] == "passed" and record["versions"]["gnutls"] == installed
        assert record["unmeasured"] == [f"unmeasured on this version: signing call: "
                                        f"gnutls {installed} (measured on 99.1)"]
    assert "❔ ok ECDSA 32B [1]" in markdown and 'data-state="unmeasured"' in html
    assert show(matrix).returncode == 0
    # `p11tls facts` writes what was measured here, keyed to the version here ...
    from harness.commands.facts import facts_main

    assert facts_main([str(matrix.path / "reports" / "results.json")]) == 0
    written = (matrix.path / "reports" / "facts" / "expected_mechanisms.toml").read_text()
    assert f'versions = {{ gnutls = "{installed}", softhsm = ' in written
    # ... and with them appended the same run is measured (the negative control)
    with open(matrix.path / "mechanisms.toml", "a") as table:
        table.write(written)
    again = run(matrix, *args)
    again.assert_outcomes(passed=2)
    again.stdout.fnmatch_lines(["2 passed, 0 failed, 0 xfailed, 0 skipped"])
    matrix_text = again.stdout.str().split("client-auth matrix")[1]
    assert "? ECDSA" not in matrix_text and "cases unmeasured" not in matrix_text
    assert "; 2 unmeasured" not in matrix_text
    cases, _, _ = reports_of(matrix)
    assert all(r["unmeasured"] == [] and r["verdict"] == "passed" for r in cases.values())


RECORDING_TESTS = """
import pytest
from harness.matrix.record import HandshakeRecord


def rec(case_id):
    return HandshakeRecord(case_id=case_id, client="gnutls", key="p256",
                           provisioning="generate", tls="1.2", outcome="ok",
                           verdict="passed")


def test_records_then_breaks(p11tls_record):
    p11tls_record(rec("a"))
    raise RuntimeError("the harness broke after the handshake")


def test_records_and_xfails(p11tls_record):
    p11tls_record(rec("b"))
    pytest.xfail("known for a reason")


def test_records_and_passes(p11tls_record):
    p11tls_record(rec("c"))
"""


def test_collector_gives_every_record_pytests_verdict(pytester):
    pytester.makepyfile(test_recording=RECORDING_TESTS)
    result = run(pytester, "--p11-reports", "reports")  # an option: the plugin acts
    result.assert_outcomes(passed=1, failed=1, xfailed=1)
    cases, _, _ = reports_of(pytester)
    assert cases["a"]["verdict"] == "failed"
    assert cases["a"]["problems"] == [
        "pytest (call): RuntimeError: the harness broke after the handshake"]
    assert cases["b"]["verdict"] == "xfailed" and cases["b"]["expected"] == "known for a reason"
    assert cases["c"]["verdict"] == "passed" and cases["c"]["problems"] == []  # control
    result.stdout.fnmatch_lines(["1 passed, 1 failed, 1 xfailed, 0 skipped"])
    assert show(pytester).returncode == 1


# -- opt-in, no PIN in any output, bad input before the token (helper E) ----------------

UNRELATED_TEST = "def test_unrelated():\n    assert 1 + 1 == 2\n"


@pytest.fixture
def spied_token(softhsm_store, pkcs11_spy, tmp_path):
    """(env, spy_log): python-pkcs11's own variables naming the 'spare' token
    with a wrong PIN, the module being pkcs11-spy in front of SoftHSM2, so
    every call that reaches the token is in spy_log."""
    store, token = softhsm_store
    spy_log = tmp_path / "spy.log"
    env = {**store.env, "PKCS11SPY": str(store.module), "PKCS11SPY_OUTPUT": str(spy_log),
           "PKCS11_MODULE": str(pkcs11_spy), "PKCS11_TOKEN_LABEL": token.label,
           "PKCS11_TOKEN_PIN": "0000"}
    return env, spy_log


def logins_in(spy_log: Path) -> int:
    return spy_log.read_text().count("C_Login") if spy_log.exists() else 0


def test_unrelated_project_never_touches_the_token(pytester, spied_token):
    env, spy_log = spied_token
    pytester.makepyfile(test_unrelated=UNRELATED_TEST)
    result = run(pytester, env=env)
    result.assert_outcomes(passed=1)
    assert logins_in(spy_log) == 0 and not spy_log.exists()  # the module was never loaded
    assert "p11tls" not in result.stdout.str()  # no header, no probes
    assert not (pytester.path / "reports").exists()
    # a PKCS11_MODULE that does not exist is no error for somebody else's tests
    broken = run(pytester, env={**env, "PKCS11_MODULE": "/nonexistent/lib.so"})
    broken.assert_outcomes(passed=1)


SAME_NAMES = """
import pytest


@pytest.fixture
def p11_case():
    return "their own case"


@pytest.fixture
def p11_settings():
    return {"theirs": True}


def test_theirs(p11_case, p11_settings):
    assert p11_case == "their own case" and p11_settings == {"theirs": True}
"""
OURS_UNASKED = "def test_uses_ours(p11tls_runner):\n    pass\n"


def test_fixtures_that_share_a_name_never_make_the_plugin_act(pytester, spied_token):
    """Issue 23 row 10: a project whose own fixtures are named p11_case and
    p11_settings, with PKCS11_* set for other tools: its tests pass and the
    token is never loaded."""
    env, spy_log = spied_token
    pytester.makepyfile(test_theirs=SAME_NAMES)
    result = run(pytester, env=env)
    result.assert_outcomes(passed=1)
    assert not spy_log.exists() and "p11tls" not in result.stdout.str()


def test_our_fixtures_unasked_fail_in_one_line_without_the_token(pytester, spied_token):
    env, spy_log = spied_token
    pytester.makepyfile(test_ours=OURS_UNASKED)
    result = run(pytester, env=env)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the p11tls plugin acts only when asked*"])
    assert not spy_log.exists()
    # control: -p p11tls asks; the environment's wrong PIN then reaches the token once
    asked = run(pytester, "-p", "p11tls", env=env)
    assert asked.ret != 0 and logins_in(spy_log) == 1


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_collected_matrix_tests_make_the_environment_count(matrix, spied_token, workers):
    """Negative control of the test above: with matrix tests in the run the
    same variables are used, and the wrong PIN reaches the token exactly once."""
    env, spy_log = spied_token
    result = run(matrix, *workers, "-k", "gnutls and p256 and generate and tls13", env=env)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: token 'spare' refused the PIN*will not be retried*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert logins_in(spy_log) == 1


def test_collect_only_does_not_log_in(matrix, spied_token):
    env, spy_log = spied_token
    result = run(matrix, "--collect-only", "-q", env=env)
    assert result.ret == pytest.ExitCode.OK
    assert logins_in(spy_log) == 0


def pin_forms(pin: str) -> list[str]:
    """The PIN as text, hex (plain, spaced, both cases) and base64, written
    out here independently of harness.pin_masking."""
    import base64

    raw = pin.encode()
    spaced = " ".join(f"{b:02x}" for b in raw)
    return [pin, raw.hex(), raw.hex().upper(), spaced, spaced.upper(),
            base64.b64encode(raw).decode()]


def files_holding(root: Path, pin: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {form!r}" for form in pin_forms(pin) if form.encode() in data]
    return found


LEAK_TESTS = """
import pytest


@pytest.fixture
def after_login(p11tls_runner, p11tls_settings):
    assert p11tls_settings.module is None, "this fixture fails after the login"


def test_fixture_fails_after_login(after_login):
    pass


def test_assertion_compares_the_pin(p11tls_runner):
    pin = p11tls_runner.pin
    assert pin == "something else"
"""


def test_pin_appears_in_no_output_report_log_or_temp_file(matrix, pkcs11_spy, tmp_path):
    from harness.token.softhsm import TemporarySoftHSM

    pin = "Pq7-leak-3306"
    store = TemporarySoftHSM(tmp_path / "leaky-softhsm")
    store.init_token("leaky", pin)
    matrix.makepyfile(test_leaks=LEAK_TESTS)
    reports, basetemp = matrix.path / "out", matrix.path / "bt"
    result = run(matrix, f"--p11-module={store.module}", "--p11-token-label=leaky",
                 f"--p11-pin={pin}", "--p11-spy", "-l", "--tb=long",
                 "--p11-clients=gnutls,java,java-nocombined",  # not every JDK's java@N
                 f"--p11-reports={reports}", f"--junitxml={reports / 'junit.xml'}",
                 f"--basetemp={basetemp}",
                 "-k", "leaks or (p256 and generate and tls13 and (gnutls or java))",
                 env=store.env)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 3 and outcomes.get("failed") == 1
    assert outcomes.get("errors", outcomes.get("error")) == 1
    output = result.stdout.str() + result.stderr.str()
    assert "fails after the login" in output and "*" * len(pin) in output  # masked, not gone
    assert [f for f in pin_forms(pin) if f in output] == []
    assert files_holding(matrix.path, pin) == []  # reports, junit.xml, basetemp
    raw = list(basetemp.rglob("spy-*.log"))
    assert {p.name for p in raw} >= {"spy-gnutls.log", "spy-java.log"}
    for path in raw:
        assert path.stat().st_mode & 0o777 == 0o600
        assert "C_Login" in path.read_text() and "pPin[ulPinLen]" in path.read_text()
    # negative control: the same scan finds the PIN in pkcs11-spy's own raw log
    import subprocess

    control = tmp_path / "control"
    control.mkdir()
    subprocess.run(["pkcs11-tool", "--module", str(pkcs11_spy), "--token-label", "leaky",
                    "--login", "--pin", pin, "--list-objects"], capture_output=True,
                   env={**os.environ, **store.env, "PKCS11SPY": str(store.module),
                        "PKCS11SPY_OUTPUT": str(control / "spy.log")}, check=True)
    assert files_holding(control, pin)


@pytest.mark.parametrize("bad, good, message", [
    (["--p11-timeout=nan"], ["--p11-timeout=30"], "*--p11-timeout must be a positive*'nan'*"),
    (["--p11-timeout=inf"], ["--p11-timeout=86400"], "*--p11-timeout must be*'inf'*"),
    (["--p11-timeout=0"], ["--p11-timeout=0.5"], "*--p11-timeout must be*'0'*"),
    (["--p11-timeout=-3"], ["--p11-timeout=3"], "*--p11-timeout must be*'-3'*"),
    (["--p11-timeout=86401"], ["--p11-timeout=600"], "*--p11-timeout must be*'86401'*"),
    (["--p11-reports=afile"], ["--p11-reports=adir"], "*--p11-reports *afile is not a directory*"),
    (["--p11-reports=afile/sub"], ["--p11-reports=adir/sub"],
     "*--p11-reports *afile/sub (its ancestor *afile) is not a directory*"),
    (["--p11-reports=/proc/1/p11tls"], ["--p11-reports=adir"], "*is not writable*"),
    (["--p11-module="], [], "*--p11-module is empty*"),
    (["--java-p11-config=fooBar = 1"], ["--java-p11-config=showInfo = false"],
     "*--java-p11-config: SunPKCS11 refuses it: Unknown keyword 'fooBar' in 'fooBar = 1'"),
], ids=["timeout-nan", "timeout-inf", "timeout-zero", "timeout-negative", "timeout-over-a-day",
        "reports-is-a-file", "reports-under-a-file", "reports-unwritable", "module-empty",
        "java-config-unknown-keyword"])
def test_bad_input_is_one_line_before_the_token_is_touched(matrix, spied_token, bad, good,
                                                           message):
    if "java" in bad[0]:
        from harness.clients.java import JavaClient

        if JavaClient().unavailable_reason():
            pytest.skip("Requires a JDK")
    env, spy_log = spied_token  # a wrong PIN: the good control stops at the token
    (matrix.path / "afile").write_text("")
    (matrix.path / "adir").mkdir()
    select = ["-k", "java and p256 and generate and tls13"]
    result = run(matrix, *bad, *select, env=env)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    errors = [line for line in result.stderr.lines if line.startswith("ERROR")]
    assert len(errors) == 1 and "Traceback" not in result.stderr.str() + result.stdout.str()
    assert logins_in(spy_log) == 0
    # negative control: the good value gets as far as the token, and the one login
    good_run = run(matrix, *good, *select, env=env)
    good_run.stderr.fnmatch_lines(["ERROR: token 'spare' refused the PIN*"])
    assert logins_in(spy_log) == 1


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_bad_environment_with_matrix_tests_is_one_line(matrix, workers):
    env = {"PKCS11_MODULE": "/nonexistent/libnone.so", "PKCS11_TOKEN_LABEL": "x",
           "PKCS11_TOKEN_PIN": "1"}
    # -k deselects the cases: still an error, not "no tests ran"
    result = run(matrix, *workers, "-k", "gnutls and p256", env=env)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: PKCS#11 module /nonexistent/libnone.so does not exist*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    # control: the same environment does not bother a project without matrix tests
    matrix.makepyfile(test_matrix=UNRELATED_TEST)
    run(matrix, *workers, env=env).assert_outcomes(passed=1)


NEVER_SEEN_PROFILE = '''\
name = "no-pss-anywhere"
emulates = "a token the project has no facts for: no RSA-PSS, no raw RSA"
source = "made up for this test"

[mechanisms]
hide = ["CKM_RSA_PKCS_PSS", "CKM_SHA256_RSA_PKCS_PSS", "CKM_RSA_X_509"]
'''


def test_under_a_profile_never_seen_every_report_counts_what_pytest_failed(matrix):
    """No outcome table for this profile: the cases it breaks fail in pytest, and
    the terminal summary, results.json and `p11tls show` count exactly those."""
    (matrix.path / "no-pss.toml").write_text(NEVER_SEEN_PROFILE)
    result = run(matrix, "--p11-profile", "no-pss.toml", "--p11-clients", "gnutls,java",
                 "-k", "rsa2048 and tls13")
    outcomes = result.parseoutcomes()
    failed, passed = outcomes.get("failed", 0), outcomes.get("passed", 0)
    assert failed >= 2, result.stdout.str()[-3000:]  # RSA in TLS 1.3 needs PSS
    cases, markdown, _ = reports_of(matrix)
    verdicts = [r["verdict"] for r in cases.values()]
    assert verdicts.count("failed") == failed and verdicts.count("passed") == passed
    result.stdout.fnmatch_lines([f"{passed} passed, {failed} failed, *"])
    assert f"{passed} passed, {failed} failed" in markdown
    shown = show(matrix)
    assert shown.returncode == 1 and f"{passed} passed, {failed} failed" in shown.stdout
    # control: the same cases without the profile all pass, and show exits 0
    clean = run(matrix, "--p11-clients", "gnutls,java", "-k", "rsa2048 and tls13")
    assert clean.parseoutcomes().get("failed", 0) == 0
    assert show(matrix).returncode == 0
