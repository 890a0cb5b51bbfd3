"""The `curl` client (the distribution's curl, OpenSSL backend) on the
session's throw-away SoftHSM2 token: TLS 1.2 and 1.3 with each default key
type, what the token was asked to sign (checked against the scheme the server
saw), curl's error after a handshake the server accepted kept out of the
verdict; negative controls: a wrong PIN (one C_Login, refused, no signature),
a server that trusts another CA, curl missing (a skip with the install hint)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest
from client_checks import (
    RAW_MECHANISMS,
    expected_input,
    foreign_ca,
    handshake_ok,
    logins,
    run_direct,
    signs,
    wrong_pin,
)

from harness.clients.curl import CurlClient
from harness.matrix.cases import FORCED_RSA_PKCS1, Case
from harness.matrix.keys import KEYS, Provisioning
from harness.tls.version import TLSVersion

pytestmark = pytest.mark.skipif(CurlClient().unavailable_reason() is not None,
                                reason=f"Requires curl: {CurlClient().unavailable_reason()}")


# What the token signs depends on the path curl takes, not on the release: the
# libp11 engine hashes on the host and hands the token the digest; pkcs11-provider
# asks for the combined hash-and-sign mechanism where the token offers it (RSA),
# and then the token's input is the message the server verified.
COMBINED = {"CKM_SHA256_RSA_PKCS", "CKM_SHA256_RSA_PKCS_PSS"}


def check_signed_input(record) -> None:
    mechanism, taken = record.sign["mechanism"], record.sign["input_bytes"]
    if mechanism in RAW_MECHANISMS:
        assert record.sign["parts"] == 0
        assert taken == expected_input(record.signature_scheme)
    else:
        assert CurlClient().path() == "provider" and mechanism in COMBINED, mechanism
        assert taken == record.signed_bytes  # the whole message, as the server counted it


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
@pytest.mark.parametrize("key", ["rsa2048", "p256", "p384"])
def test_handshake_signs_once_what_the_server_verified(p11tls_runner, key, tls):
    record = handshake_ok(p11tls_runner, "curl", key, tls)
    check_signed_input(record)
    if key != "rsa2048":  # both paths hash ECDSA on the host
        assert record.sign["mechanism"] == "CKM_ECDSA"
    assert record.error is None  # curl's "(52) Empty reply" is not the verdict
    assert not record.problems and not record.unmeasured


def test_forced_rsa_pkcs1_signs_a_digest_info_or_the_message(p11tls_runner):
    case = Case("curl", KEYS["rsa2048"], Provisioning.GENERATE, TLSVersion.TLS12,
                FORCED_RSA_PKCS1)
    record = p11tls_runner.run(case)
    assert record.outcome == "ok", record.error
    assert record.signature_scheme == "rsa_pkcs1_sha256"
    check_signed_input(record)
    assert record.sign["mechanism"] in ("CKM_RSA_PKCS", "CKM_SHA256_RSA_PKCS")


def test_error_after_an_accepted_handshake_says_so(p11tls_runner, tmp_path):
    done = run_direct(p11tls_runner, "curl", tmp_path / "ok")
    assert done.seen.accepted
    assert done.result.returncode != 0  # the server sends no HTTP
    assert "after the TLS handshake" in (done.result.error or "")
    rejected = run_direct(p11tls_runner, "curl", tmp_path / "no",  # negative control
                          client_ca=foreign_ca(tmp_path / "ca"))
    assert not rejected.seen.accepted
    assert "after the TLS handshake" not in (rejected.result.error or "")


def test_wrong_pin_is_refused_once(p11tls_runner, tmp_path):
    pin = p11tls_runner.pin
    wrong = wrong_pin(pin)
    bad = run_direct(p11tls_runner, "curl", tmp_path / "wrong", pin=wrong)
    assert not bad.seen.accepted
    assert logins(bad.calls) == ["CKR_PIN_INCORRECT"]
    assert not signs(bad.calls)
    good = run_direct(p11tls_runner, "curl", tmp_path / "right")  # negative control
    assert good.seen.accepted and logins(good.calls) == ["CKR_OK"]


def test_server_trusting_another_ca_rejects_the_certificate(p11tls_runner, tmp_path):
    other = run_direct(p11tls_runner, "curl", tmp_path / "other",
                       client_ca=foreign_ca(tmp_path / "ca"))
    assert not other.seen.accepted and other.seen.client_subject is None
    assert run_direct(p11tls_runner, "curl", tmp_path / "same").seen.accepted  # control


def test_pin_is_in_no_argv_and_no_file_afterwards(p11tls_runner, tmp_path):
    done = run_direct(p11tls_runner, "curl", tmp_path / "pin")
    log = done.job.log_path.read_text()
    argv = log.splitlines()[0]
    assert done.seen.accepted and p11tls_runner.pin not in log
    # the engine's curl config (-K) or the provider's PIN file (pin-source): removed
    private = re.search(r" -K (\S+)|pin-source=file:([^&\s]+)", argv)
    assert private is not None, argv
    assert not Path(unquote(private.group(1) or private.group(2))).parent.exists()


def test_missing_curl_is_a_skip_with_the_install_hint(p11tls_runner, monkeypatch):
    case = Case("curl", KEYS["p256"], Provisioning.GENERATE, TLSVersion.TLS12)
    real_which = shutil.which
    monkeypatch.setattr("shutil.which",
                        lambda name, *a, **k: None if name == "curl" else real_which(name))
    record = p11tls_runner.run(case)
    assert record.outcome == "skip" and "install curl" in record.error
    monkeypatch.undo()
    assert p11tls_runner.run(case).outcome == "ok"  # negative control
