"""The matrix runner on the session's throw-away token: positive cases and
their negative controls (wrong CA, a certificate that does not match the
token key), token safety and provisioning properties."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography import x509
from pkcs11 import Attribute, ObjectClass

from harness.matrix.cases import Case
from harness.matrix.keys import KEYS, Provisioning
from harness.tls.ca import TestCA, write_pem
from harness.tls.version import TLSVersion
from harness.token.provision import Provisioner

CASE = Case("openssl-engine", KEYS["p256"], Provisioning.GENERATE, TLSVersion.TLS12)


def test_good_setup_handshakes(p11tls_runner):
    record = p11tls_runner.run(CASE)
    assert record.outcome == "ok", record.error
    assert record.signature_scheme == "ecdsa_secp256r1_sha256"
    assert record.negotiated_version == "TLSv1.2"
    key = p11tls_runner.key(CASE.key, CASE.provisioning)
    assert record.client_subject == f"CN={key.label}"
    assert record.signed_bytes > 1000  # TLS 1.2 signs the whole transcript


def test_one_server_serves_every_case_and_logs_each(p11tls_runner):
    first = p11tls_runner.run(CASE)
    port = p11tls_runner.server().port
    second = p11tls_runner.run(dataclasses.replace(CASE, tls=TLSVersion.TLS13))
    assert first.outcome == second.outcome == "ok", (first.error, second.error)
    assert p11tls_runner.server().port == port
    assert second.negotiated_version == "TLSv1.3"
    assert second.signed_bytes == 64 + 34 + (48 if second.cipher.endswith("SHA384") else 32)
    log = Path(second.logs["server"]).read_text()
    assert "<- CertificateVerify" in log and "accepted=True" in log


def test_server_error_reaches_the_record_and_the_next_case_runs(p11tls_runner):
    broken = p11tls_runner.run(dataclasses.replace(CASE, client_sigalgs="no_such_scheme"))
    assert broken.outcome == "error"
    assert "cannot allow client signature schemes 'no_such_scheme'" in broken.error
    assert p11tls_runner.run(CASE).outcome == "ok"  # negative control, same server


@pytest.mark.parametrize("client, key, tls, sigalgs", [
    ("java", "rsa2048", TLSVersion.TLS12, "rsa_pkcs1_sha256"),  # CKM_SHA256_RSA_PKCS, streamed
    ("gnutls", "ed25519", TLSVersion.TLS12, None),  # pure EdDSA: the message itself
    ("gnutls", "ed25519", TLSVersion.TLS13, None),
], ids=["java-rsa-pkcs1-tls12", "gnutls-ed25519-tls12", "gnutls-ed25519-tls13"])
def test_server_count_is_what_the_token_was_given(p11tls_runner, client, key, tls, sigalgs):
    """signed_bytes, counted from the handshake messages, against the bytes a
    combined or pure mechanism really took on the token."""
    record = p11tls_runner.run(Case(client, KEYS[key], Provisioning.GENERATE, tls, sigalgs))
    if record.outcome == "skip":
        pytest.skip(record.error)
    assert record.outcome == "ok", record.error
    assert record.sign["input_bytes"] == record.signed_bytes
    digest = p11tls_runner.run(CASE)  # negative control: CKM_ECDSA takes only a digest
    assert digest.sign["input_bytes"] == 32 < digest.signed_bytes


def _run_with_cert(p11tls_runner, cert_pem, tmp_path):
    """Run CASE but hand the client another certificate file."""
    key = p11tls_runner.key(CASE.key, CASE.provisioning)
    swapped = dataclasses.replace(key, cert_pem=cert_pem)
    p11tls_runner.keys[(CASE.key.name, CASE.provisioning)] = swapped
    try:
        return p11tls_runner.run(CASE)
    finally:
        p11tls_runner.keys[(CASE.key.name, CASE.provisioning)] = key


def test_client_certificate_from_another_ca_is_rejected(p11tls_runner, tmp_path):
    key = p11tls_runner.key(CASE.key, CASE.provisioning)
    token_public_key = x509.load_pem_x509_certificate(key.cert_pem.read_bytes()).public_key()
    other = TestCA(tmp_path / "other-ca", name="another CA")
    foreign = write_pem(other.issue_client_cert(token_public_key, key.label),
                        tmp_path / "foreign.pem")
    record = _run_with_cert(p11tls_runner, foreign, tmp_path)
    assert record.outcome == "fail"
    assert "unknown ca" in record.error or "certificate verify failed" in record.error


def test_certificate_not_matching_the_token_key_fails(p11tls_runner, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    key = p11tls_runner.key(CASE.key, CASE.provisioning)
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    mismatched = write_pem(p11tls_runner.ca.issue_client_cert(stranger, key.label),
                           tmp_path / "mismatch.pem")
    record = _run_with_cert(p11tls_runner, mismatched, tmp_path)
    assert record.outcome == "fail"
    assert record.error


def test_generated_private_key_is_sensitive_and_not_extractable(p11tls_runner):
    key = p11tls_runner.key(KEYS["p256"], Provisioning.GENERATE)
    session = p11tls_runner.main_token.session
    (private,) = session.get_objects({Attribute.ID: bytes.fromhex(key.id_hex),
                                      Attribute.CLASS: ObjectClass.PRIVATE_KEY})
    assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
    assert private[Attribute.LOCAL]  # made on the token
    imported = p11tls_runner.key(KEYS["p256"], Provisioning.IMPORT)
    (other,) = session.get_objects({Attribute.ID: bytes.fromhex(imported.id_hex),
                                    Attribute.CLASS: ObjectClass.PRIVATE_KEY})
    assert not other[Attribute.LOCAL]  # negative control: C_CreateObject


def test_key_cert_and_public_key_share_one_unique_id(p11tls_runner):
    ids = set()
    session = p11tls_runner.main_token.session
    for prov in (Provisioning.GENERATE, Provisioning.IMPORT):  # the ones that make keys
        key = p11tls_runner.key(KEYS["rsa2048"], prov)
        objs = list(session.get_objects({Attribute.ID: bytes.fromhex(key.id_hex)}))
        assert sorted(o[Attribute.CLASS] for o in objs) == sorted(
            [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.CERTIFICATE])
        assert {o[Attribute.LABEL] for o in objs} == {key.label}
        ids.add(key.id_hex)
    assert len(ids) == 2


def test_cleanup_removes_only_what_the_harness_created(p11tls_runner, tmp_path):
    session = p11tls_runner.main_token.session
    foreign = session.create_object({
        Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True,
        Attribute.LABEL: "users-own-object", Attribute.VALUE: b"keep me",
    })
    provisioner = Provisioner(p11tls_runner.main_token, p11tls_runner.ca, tmp_path, "cleanup")
    made = provisioner.provision(KEYS["p256"], Provisioning.IMPORT)
    assert provisioner.remove_created() == 3
    assert not list(session.get_objects({Attribute.LABEL: made.label}))
    assert list(session.get_objects({Attribute.LABEL: "users-own-object"}))
    foreign.destroy()


def test_unavailable_client_is_a_skip_with_reason(p11tls_runner, monkeypatch):
    client = p11tls_runner.client("gnutls")
    monkeypatch.setattr("shutil.which", lambda name: None)
    record = p11tls_runner.run(dataclasses.replace(CASE, client="gnutls"))
    assert record.outcome == "skip" and "install gnutls-bin" in record.error
    # asked for by name (--p11-clients gnutls), a missing client is an error
    monkeypatch.setattr(p11tls_runner, "settings",
                        dataclasses.replace(p11tls_runner.settings, clients_named=True))
    named = p11tls_runner.run(dataclasses.replace(CASE, client="gnutls"))
    assert named.outcome == "error" and "install gnutls-bin" in named.error
    monkeypatch.undo()
    assert client.unavailable_reason() is None  # negative control


@pytest.mark.parametrize("client", ["openssl-engine", "gnutls"])
def test_forced_rsa_pkcs1_in_tls12(p11tls_runner, client):
    case = Case(client, KEYS["rsa2048"], Provisioning.GENERATE, TLSVersion.TLS12,
                "rsa_pkcs1_sha256")
    forced = p11tls_runner.run(case)
    assert forced.outcome == "ok" and forced.signature_scheme == "rsa_pkcs1_sha256"
