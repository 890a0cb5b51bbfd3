"""The `eap-tls` client (eapol_test + the libp11 engine) against hostapd's
RADIUS server on the session's throw-away SoftHSM2 token: TLS 1.2 and 1.3,
hostapd's log read for the version and the verified certificate, one signing
call; the PIN masked out of eapol_test's output; negative controls: a server
that trusts another CA, a wrong PIN, eapol_test missing (a skip with the package)."""

from __future__ import annotations

import shutil

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

from harness.clients.eap_tls import EAPTLSClient, masked, observation
from harness.matrix.cases import Case
from harness.matrix.keys import KEYS, Provisioning
from harness.tls.version import TLSVersion

pytestmark = pytest.mark.skipif(EAPTLSClient().unavailable_reason() is not None,
                                reason=f"Requires eap-tls: {EAPTLSClient().unavailable_reason()}")


def direct(runner, logs, **options):
    return run_own_peer(runner, "eap-tls", logs, **options)


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
@pytest.mark.parametrize("key", ["rsa2048", "p256"])
def test_eap_tls_against_hostapd(p11tls_runner, key, tls):
    record = handshake_ok(p11tls_runner, "eap-tls", key, tls)  # version: hostapd's log
    assert record.peer.startswith("hostapd")
    signed_a_host_made_digest(record)
    assert not record.problems and not record.unmeasured


def test_pin_is_masked_in_the_log(p11tls_runner, tmp_path):
    result, _, job = direct(p11tls_runner, tmp_path / "pin")
    assert result.peer.accepted
    text = job.log_path.read_text()
    assert p11tls_runner.pin not in text and "[PIN masked]" in text
    assert p11tls_runner.pin not in (tmp_path / "pin" / "hostapd.log").read_text()


def test_masking():
    dump = ("pin - hexdump_ascii(len=20):\n"
            "     31 32 33 34 35 36 37 38 39 30 31 32 33 34 35 36   1234567890123456\n"
            "     37 38 39 30                                       7890\nnext\n")
    out = masked(dump, "12345678901234567890")
    assert "1234" not in out and "7890" not in out and "next" in out
    assert "a line" in masked("a line\n", "")  # no PIN: unchanged (negative control)


def test_server_trusting_another_ca_fails(p11tls_runner, tmp_path):
    result, _, _ = direct(p11tls_runner, tmp_path / "other", ca=foreign_ca(tmp_path / "ca"))
    assert not result.peer.accepted and result.error
    assert direct(p11tls_runner, tmp_path / "same")[0].peer.accepted  # control


def test_wrong_pin_fails_with_one_login(p11tls_runner, tmp_path):
    wrong = wrong_pin(p11tls_runner.pin)
    result, calls, _ = direct(p11tls_runner, tmp_path / "wrong", pin=wrong)
    assert not result.peer.accepted
    assert logins(calls) == ["CKR_PIN_INCORRECT"] and not signs(calls)
    result, calls, _ = direct(p11tls_runner, tmp_path / "right")  # negative control
    assert result.peer.accepted and "CKR_OK" in logins(calls)


def test_hostapd_log_parsing():
    log = ("SSL: Using TLS version TLSv1.3\nOpenSSL: Server selected cipher suite 0x1302\n"
           "authsrv: peer certificate: depth=0 serial_num=01 subject=/CN=p11tls-x\n"
           "RADIUS SRV: [0x0 127.0.0.1] Sending Access-Accept (id=1)\n")
    seen = observation(log)
    assert seen.accepted and seen.negotiated_version == "TLSv1.3"
    assert seen.client_subject == "CN=p11tls-x" and seen.cipher == "0x1302"
    assert not observation("RADIUS SRV: Received 1 bytes\nSending Access-Reject\n").accepted


def test_missing_eapol_test_is_a_skip_with_the_package(p11tls_runner, monkeypatch):
    case = Case("eap-tls", KEYS["p256"], Provisioning.GENERATE, TLSVersion.TLS12)
    real_which = shutil.which
    monkeypatch.setattr("shutil.which",
                        lambda name, *a, **k: None if name == "eapol_test" else real_which(name))
    record = p11tls_runner.run(case)
    assert record.outcome == "skip" and "install eapoltest" in record.error
    monkeypatch.undo()
    assert p11tls_runner.run(case).outcome == "ok"  # negative control
