"""The `go` client (crypto/tls + ThalesIgnite/crypto11, built offline from
Debian's sources) on the session's throw-away SoftHSM2 token: TLS 1.2 and 1.3
with each default key type, one raw signing call over a host-made digest
(checked against the scheme the server saw); the build is cached and offline;
negative controls: a wrong PIN (one C_Login, refused, no signature), a server
that trusts another CA, go or crypto11 missing (a skip with the package)."""

from __future__ import annotations

import shutil

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

from harness.clients import go as go_module
from harness.clients.go import GoClient, build_binary, build_env, find_go_sources
from harness.errors import HarnessError
from harness.matrix.cases import FORCED_RSA_PKCS1, Case
from harness.matrix.keys import KEYS, Provisioning
from harness.tls.version import TLSVersion

pytestmark = pytest.mark.skipif(GoClient().unavailable_reason() is not None,
                                reason=f"Requires go: {GoClient().unavailable_reason()}")


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
@pytest.mark.parametrize("key", ["rsa2048", "p256", "p384"])
def test_handshake_signs_a_host_made_digest_once(p11tls_runner, key, tls):
    record = handshake_ok(p11tls_runner, "go", key, tls)
    signed_a_host_made_digest(record)
    assert not record.problems and not record.unmeasured


def test_forced_rsa_pkcs1_signs_a_digest_info(p11tls_runner):
    case = Case("go", KEYS["rsa2048"], Provisioning.GENERATE, TLSVersion.TLS12,
                FORCED_RSA_PKCS1)
    record = p11tls_runner.run(case)
    assert record.outcome == "ok", record.error
    assert record.signature_scheme == "rsa_pkcs1_sha256"
    assert record.sign["mechanism"] == "CKM_RSA_PKCS" and record.sign["input_bytes"] == 51


def test_wrong_pin_is_refused_once(p11tls_runner, tmp_path):
    wrong = wrong_pin(p11tls_runner.pin)
    bad = run_direct(p11tls_runner, "go", tmp_path / "wrong", pin=wrong)
    assert not bad.seen.accepted and bad.result.returncode != 0
    assert "CKR_PIN_INCORRECT" in (bad.result.error or "")
    assert logins(bad.calls) == ["CKR_PIN_INCORRECT"]
    assert not signs(bad.calls)
    good = run_direct(p11tls_runner, "go", tmp_path / "right")  # negative control
    assert good.seen.accepted and logins(good.calls) == ["CKR_OK"]


def test_server_trusting_another_ca_rejects_the_certificate(p11tls_runner, tmp_path):
    for tls in TLSVersion:
        other = run_direct(p11tls_runner, "go", tmp_path / f"other{tls.value}", tls=tls,
                           client_ca=foreign_ca(tmp_path / f"ca{tls.value}"))
        assert not other.seen.accepted and other.result.returncode != 0
    assert run_direct(p11tls_runner, "go", tmp_path / "same").seen.accepted  # control


def test_pin_is_in_no_argv_and_no_log(p11tls_runner, tmp_path):
    done = run_direct(p11tls_runner, "go", tmp_path / "pin")
    assert done.seen.accepted
    assert p11tls_runner.pin not in done.job.log_path.read_text()


def test_build_is_cached_and_offline(tmp_path):
    env = build_env(tmp_path)
    assert env["GO111MODULE"] == "off" and env["GOPROXY"] == "off"
    first = build_binary(find_go_sources(), tmp_path)
    assert build_binary(find_go_sources(), tmp_path) == first  # the cache, not a rebuild
    source = tmp_path / "src"
    source.mkdir()
    (source / "p11tls_client.go").write_text("package main\nfunc main() { nope }\n")
    with pytest.raises(HarnessError, match="go build"):  # negative control: a bad source
        build_binary(source, tmp_path)


@pytest.mark.parametrize("missing,hint", [("go", "install golang-go"),
                                          ("crypto11", "golang-github-thalesignite-crypto11-dev")])
def test_missing_toolchain_or_crypto11_is_a_skip(p11tls_runner, monkeypatch, tmp_path,
                                                 missing, hint):
    case = Case("go", KEYS["p256"], Provisioning.GENERATE, TLSVersion.TLS12)
    if missing == "go":
        real_which = shutil.which
        monkeypatch.setattr("shutil.which",
                            lambda name, *a, **k: None if name == "go" else real_which(name))
    else:
        monkeypatch.setattr(go_module, "CRYPTO11", tmp_path / "none")
    record = p11tls_runner.run(case)
    assert record.outcome == "skip" and hint in record.error
    monkeypatch.undo()
    assert p11tls_runner.run(case).outcome == "ok"  # negative control
