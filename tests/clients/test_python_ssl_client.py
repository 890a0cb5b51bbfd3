"""The `python-ssl` client (Python's ssl through pkcs11-provider, Debian 13+)
on the session's throw-away SoftHSM2 token: the PEM-wrapped PKCS#11 URI key
file, TLS 1.2 and 1.3 with each default key type; negative controls: a wrong
PIN (no signature), a server that trusts another CA, pkcs11-provider missing
(a skip with the package, as on Debian 12)."""

from __future__ import annotations

import base64

import pytest
from client_checks import foreign_ca, logins, run_direct, signs, wrong_pin

from harness.clients import python_ssl
from harness.clients.python_ssl import PythonSSLClient, uri_pem
from harness.matrix.cases import Case
from harness.matrix.keys import KEYS, Provisioning
from harness.tls.version import TLSVersion

available = pytest.mark.skipif(PythonSSLClient().unavailable_reason() is not None,
                               reason=f"Requires: {PythonSSLClient().unavailable_reason()}")


def test_uri_pem_is_the_provider_structure():
    pem = uri_pem("pkcs11:token=t;id=%01;type=private")
    assert pem.startswith("-----BEGIN PKCS#11 PROVIDER URI-----\n")
    der = base64.b64decode("".join(pem.splitlines()[1:-1]))
    assert der[0] == 0x30 and der[2] == 0x1A  # SEQUENCE { VisibleString, UTF8String }
    assert b"PKCS#11 Provider URI v1.0" in der and der.endswith(b"type=private")
    long_uri = "pkcs11:object=" + "x" * 200  # a long form length, still well formed
    der = base64.b64decode("".join(uri_pem(long_uri).splitlines()[1:-1]))
    assert der[1] == 0x81 and der[2] == len(der) - 3


@available
@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
@pytest.mark.parametrize("key", ["rsa2048", "p256", "p384"])
def test_handshake_through_pkcs11_provider(p11tls_runner, key, tls):
    case = Case("python-ssl", KEYS[key], Provisioning.GENERATE, tls)
    record = p11tls_runner.judge(case, p11tls_runner.run(case))
    assert record.outcome == "ok", record.error
    assert record.negotiated_version == f"TLSv{tls.value}"
    assert record.sign["rv"] == "CKR_OK"
    assert not record.problems


@available
def test_wrong_pin_and_foreign_ca_fail(p11tls_runner, tmp_path):
    wrong = wrong_pin(p11tls_runner.pin)
    bad = run_direct(p11tls_runner, "python-ssl", tmp_path / "wrong", pin=wrong)
    assert not bad.seen.accepted and not signs(bad.calls)
    assert "CKR_OK" not in logins(bad.calls)
    other = run_direct(p11tls_runner, "python-ssl", tmp_path / "other",
                       client_ca=foreign_ca(tmp_path / "ca"))
    assert not other.seen.accepted
    good = run_direct(p11tls_runner, "python-ssl", tmp_path / "right")  # negative control
    assert good.seen.accepted and p11tls_runner.pin not in good.job.log_path.read_text()


def test_missing_provider_is_a_skip_with_the_package(p11tls_runner, monkeypatch):
    monkeypatch.setattr(python_ssl, "find_provider", lambda: None)
    case = Case("python-ssl", KEYS["p256"], Provisioning.GENERATE, TLSVersion.TLS12)
    record = p11tls_runner.run(case)
    assert record.outcome == "skip" and "install pkcs11-provider" in record.error
