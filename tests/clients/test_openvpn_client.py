"""The `openvpn` client (pkcs11-helper) against a throw-away openvpn server on
the session's throw-away SoftHSM2 token: TLS 1.2 and 1.3, the server's log read
for the version and the verified certificate, one raw signing call over a
host-made digest; the PIN through the management socket, answered once;
negative controls: a wrong PIN (one C_Login, refused, not retried), a server
that trusts another CA, openvpn missing (a skip with the package)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from client_checks import (
    foreign_ca,
    handshake_ok,
    logins,
    run_own_peer,
    signed_a_host_made_digest,
    signs,
    wrong_pin,
)

from harness.clients.openvpn import OpenVPNClient, observation
from harness.matrix.cases import Case, cases
from harness.matrix.keys import KEYS, Provisioning
from harness.tls.version import TLSVersion

pytestmark = pytest.mark.skipif(OpenVPNClient().unavailable_reason() is not None,
                                reason=f"Requires openvpn: {OpenVPNClient().unavailable_reason()}")


def direct(runner, logs, **options):
    return run_own_peer(runner, "openvpn", logs, **options)


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
@pytest.mark.parametrize("key", ["rsa2048", "p256"])
def test_handshake_with_a_real_openvpn_server(p11tls_runner, key, tls):
    record = handshake_ok(p11tls_runner, "openvpn", key, tls)  # version: the openvpn server's log
    assert record.peer.startswith("openvpn server")
    signed_a_host_made_digest(record)
    assert not record.problems and not record.unmeasured


def test_no_forced_scheme_cases_for_an_own_peer():
    ids = [c.case_id for c in cases(["openvpn", "gnutls"], (KEYS["rsa2048"],))]
    assert "gnutls-rsa2048-generate-tls12-rsa_pkcs1_sha256" in ids  # control
    assert not any(i.startswith("openvpn") and i.endswith("rsa_pkcs1_sha256") for i in ids)


def test_wrong_pin_is_sent_once_and_not_retried(p11tls_runner, tmp_path):
    wrong = wrong_pin(p11tls_runner.pin)
    result, calls, _ = direct(p11tls_runner, tmp_path / "wrong", pin=wrong)
    assert not result.peer.accepted
    assert logins(calls) == ["CKR_PIN_INCORRECT"]  # pkcs11-helper asked again: not answered
    assert not signs(calls)
    assert "not retried" in result.error
    result, calls, _ = direct(p11tls_runner, tmp_path / "right")  # negative control
    assert result.peer.accepted and logins(calls) == ["CKR_OK"]


def test_pin_is_in_no_argv_no_log_and_no_file(p11tls_runner, tmp_path):
    result, _, job = direct(p11tls_runner, tmp_path / "pin")
    assert result.peer.accepted
    for log in tmp_path.joinpath("pin").glob("*.log"):
        assert p11tls_runner.pin not in log.read_text()
    config = Path(job.log_path.read_text().splitlines()[0].split()[-1])
    assert not config.parent.exists()  # the configs and the management socket: removed


def test_server_trusting_another_ca_fails(p11tls_runner, tmp_path):
    result, _, _ = direct(p11tls_runner, tmp_path / "other", ca=foreign_ca(tmp_path / "ca"))
    assert not result.peer.accepted and result.error
    assert direct(p11tls_runner, tmp_path / "same")[0].peer.accepted  # control


def test_server_log_parsing():
    log = ("VERIFY OK: depth=0, CN=p11tls-x\n"
           "Control Channel: TLSv1.3, cipher TLSv1.3 TLS_AES_256_GCM_SHA384, peer certificate\n"
           "[p11tls-x] Peer Connection Initiated with [AF_INET]127.0.0.1:1\n")
    seen = observation(log)
    assert seen.accepted and seen.negotiated_version == "TLSv1.3"
    assert seen.cipher == "TLS_AES_256_GCM_SHA384" and seen.client_subject == "CN=p11tls-x"
    rejected = observation("VERIFY ERROR: depth=0, error=unable to get local issuer\n")
    assert not rejected.accepted and rejected.error.startswith("VERIFY ERROR")


def test_missing_openvpn_is_a_skip_with_the_package(p11tls_runner, monkeypatch):
    case = Case("openvpn", KEYS["p256"], Provisioning.GENERATE, TLSVersion.TLS12)
    real_which = shutil.which
    monkeypatch.setattr("shutil.which",
                        lambda name, *a, **k: None if name == "openvpn" else real_which(name))
    record = p11tls_runner.run(case)
    assert record.outcome == "skip" and "install openvpn" in record.error
    monkeypatch.undo()
    assert p11tls_runner.run(case).outcome == "ok"  # negative control
