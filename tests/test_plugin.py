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
    records = json.loads((matrix.path / "reports" / "results.json").read_text())
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
    result = run(matrix, "--collect-only", "-q", "-m", "tls12", "-v")
    result.stdout.fnmatch_lines(["p11tls module: embedded default: throw-away SoftHSM2*",
                                 "p11tls clients: OpenSSL*gnutls-cli*Java 1*python-pkcs11*"])
    store, token = softhsm_store
    own = run(matrix, "--collect-only", "-q", "-v", f"--p11-module={store.module}",
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
        (["--p11-clients=curl"], "*unknown client curl*"),
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
    store, _ = softhsm_store
    result = run(matrix, f"--p11-module={store.module}", "--p11-token-label=absent",
                 "--p11-pin=4711", env=store.env)
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
