"""The local TLS server, driven by plain `openssl s_client` with PEM keys
(no token involved), so its own behaviour is tested apart from the clients."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import trustme

from harness.ca import TestCA
from harness.server import HandshakeServer, ServerError
from harness.tls import TLSVersion


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("server-ca"))


def pem_client(ca: trustme.CA, directory: Path, key_type=trustme.KeyType.ECDSA):
    leaf = ca.issue_cert("client@example.test", key_type=key_type)
    cert, key = directory / "client.pem", directory / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def handshake(ca: TestCA, tmp_path: Path, cert: Path, key: Path, tls: TLSVersion,
              sigalgs: str | None = None):
    server = HandshakeServer(cert_pem=ca.server_cert_pem, key_pem=ca.server_key_pem,
                             client_ca_pem=ca.ca_pem, tls=tls, log_path=tmp_path / "server.log",
                             client_sigalgs=sigalgs)
    port = server.start()
    subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-cert", str(cert),
         "-key", str(key), "-CAfile", str(ca.ca_pem)],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False,
    )
    return server.finish()


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
def test_accepts_client_from_its_ca_and_reports_what_it_saw(ca, tmp_path, tls):
    cert, key = pem_client(ca.ca, tmp_path)
    seen = handshake(ca, tmp_path, cert, key, tls)
    assert seen.accepted and seen.connected
    assert seen.negotiated_version == "TLSv" + tls.value
    assert seen.signature_scheme == "ecdsa_secp256r1_sha256"
    assert seen.cipher
    assert seen.client_subject  # the verified client certificate
    assert seen.error is None


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
def test_rejects_client_certificate_from_another_ca(ca, tmp_path, tls):
    cert, key = pem_client(trustme.CA(), tmp_path)
    seen = handshake(ca, tmp_path, cert, key, tls)
    assert seen.connected
    assert not seen.accepted
    assert seen.error and "certificate" in seen.error


def test_client_sigalgs_restrict_the_client_signature(ca, tmp_path):
    cert, key = pem_client(ca.ca, tmp_path, trustme.KeyType.RSA)
    free = handshake(ca, tmp_path, cert, key, TLSVersion.TLS12)
    forced = handshake(ca, tmp_path, cert, key, TLSVersion.TLS12, sigalgs="rsa_pkcs1_sha256")
    assert free.signature_scheme == "rsa_pss_rsae_sha256"  # negative control
    assert forced.accepted and forced.signature_scheme == "rsa_pkcs1_sha256"


def test_no_client_is_seen_as_not_connected_without_waiting(ca, tmp_path):
    server = HandshakeServer(cert_pem=ca.server_cert_pem, key_pem=ca.server_key_pem,
                             client_ca_pem=ca.ca_pem, tls=TLSVersion.TLS13,
                             log_path=tmp_path / "server.log")
    server.start()
    start = time.monotonic()
    seen = server.finish()
    assert not seen.connected and not seen.accepted
    assert time.monotonic() - start < 2


def test_server_that_cannot_start_raises_at_once(ca, tmp_path):
    server = HandshakeServer(cert_pem=tmp_path / "missing.pem", key_pem=ca.server_key_pem,
                             client_ca_pem=ca.ca_pem, tls=TLSVersion.TLS12,
                             log_path=tmp_path / "server.log")
    start = time.monotonic()
    with pytest.raises(ServerError, match="did not start listening"):
        server.start()
    assert time.monotonic() - start < 5
