"""The `nss` client (tstclnt) on the session's throw-away SoftHSM2 token:
TLS 1.2 and 1.3 with each default key type, what the token was asked to sign
(checked against the scheme the server saw), NSS's own PKCS#11 log per case;
negative controls: a wrong PIN (one C_Login, refused, no signature), a server
that trusts another CA, tstclnt missing (a skip with the install hint)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from client_checks import (
    foreign_ca,
    handshake_ok,
    logins,
    run_direct,
    signed_a_host_made_digest,
    signs,
    wrong_pin,
)

from harness.clients.nss import DEBUG_LOG, NSSClient
from harness.matrix.cases import FORCED_RSA_PKCS1, Case
from harness.matrix.keys import KEYS, Provisioning
from harness.tls.version import TLSVersion

pytestmark = pytest.mark.skipif(NSSClient().unavailable_reason() is not None,
                                reason=f"Requires NSS: {NSSClient().unavailable_reason()}")


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
@pytest.mark.parametrize("key", ["rsa2048", "p256", "p384"])
def test_handshake_signs_once_with_a_raw_mechanism(p11tls_runner, key, tls):
    record = handshake_ok(p11tls_runner, "nss", key, tls)
    # NSS hashes on the host: one C_Sign over the digest of the scheme the server saw
    signed_a_host_made_digest(record)
    assert not record.problems and not record.unmeasured  # the facts hold here


def test_forced_rsa_pkcs1_signs_a_digest_info(p11tls_runner):
    case = Case("nss", KEYS["rsa2048"], Provisioning.GENERATE, TLSVersion.TLS12,
                FORCED_RSA_PKCS1)
    record = p11tls_runner.run(case)
    assert record.outcome == "ok", record.error
    assert record.signature_scheme == "rsa_pkcs1_sha256"
    assert (record.sign["mechanism"], record.sign["input_bytes"]) == ("CKM_RSA_PKCS", 51)


def test_nss_debug_log_is_kept_per_case_without_the_pin(p11tls_runner):
    case = Case("nss", KEYS["p256"], Provisioning.GENERATE, TLSVersion.TLS13)
    record = p11tls_runner.run(case)
    assert record.outcome == "ok", record.error
    log = Path(record.logs["client"]).parent / DEBUG_LOG
    text = log.read_text()
    assert "C_Login" in text and "C_Sign" in text and "CKM_ECDSA" in text
    assert p11tls_runner.pin not in text
    assert p11tls_runner.pin not in Path(record.logs["client"]).read_text()


def test_wrong_pin_is_refused_once(p11tls_runner, tmp_path):
    pin = p11tls_runner.pin
    wrong = wrong_pin(pin)
    bad = run_direct(p11tls_runner, "nss", tmp_path / "wrong", pin=wrong)
    assert not bad.seen.accepted
    assert logins(bad.calls) == ["CKR_PIN_INCORRECT"]  # once: never retried
    assert not signs(bad.calls)
    good = run_direct(p11tls_runner, "nss", tmp_path / "right")  # negative control
    assert good.seen.accepted and logins(good.calls) == ["CKR_OK"]


def test_server_trusting_another_ca_rejects_the_certificate(p11tls_runner, tmp_path):
    other = run_direct(p11tls_runner, "nss", tmp_path / "other",
                       client_ca=foreign_ca(tmp_path / "ca"))
    assert not other.seen.accepted and other.seen.client_subject is None
    same = run_direct(p11tls_runner, "nss", tmp_path / "same")  # negative control
    assert same.seen.accepted


def test_pin_pipe_is_gone_after_the_handshake(p11tls_runner, tmp_path):
    done = run_direct(p11tls_runner, "nss", tmp_path / "pin")
    argv = done.job.log_path.read_text().splitlines()[0]
    pin_file = Path(argv.split(" -W ", 1)[1].split(" ", 1)[0])
    assert done.seen.accepted and not pin_file.exists() and not pin_file.parent.exists()
    assert p11tls_runner.pin not in argv


def test_missing_tstclnt_is_a_skip_with_the_install_hint(p11tls_runner, monkeypatch):
    case = Case("nss", KEYS["p256"], Provisioning.GENERATE, TLSVersion.TLS12)
    real_which = shutil.which
    monkeypatch.setattr("shutil.which",
                        lambda name, *a, **k: None if name == "tstclnt" else real_which(name))
    record = p11tls_runner.run(case)
    assert record.outcome == "skip" and "install libnss3-tools" in record.error
    monkeypatch.undo()
    assert p11tls_runner.run(dataclasses.replace(case)).outcome == "ok"  # negative control
