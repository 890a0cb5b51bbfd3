"""The reference TLS server, driven by clients with PEM keys (no token
involved), so its own behaviour is tested apart from the clients under test:
`openssl s_client` and a pyOpenSSL client that counts the transcript on its
own side through its own message callback."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import ffi, lib

from harness.tls import server as server_module
from harness.tls.ca import TestCA
from harness.tls.server import HandshakeServer, ServerCase, ServerError, ca_names_from
from harness.tls.transcript_padding import names_size, padding_file
from harness.tls.version import TLSVersion

CN = "p11tls-test-client"
ECDSA, RSA = trustme.KeyType.ECDSA, trustme.KeyType.RSA


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("server-ca"))


@pytest.fixture(scope="module")
def server(ca: TestCA) -> Iterator[HandshakeServer]:
    """One server for the whole module, as the runner has one per run."""
    with HandshakeServer(cert_pem=ca.server_cert_pem, key_pem=ca.server_key_pem,
                         client_ca_pem=ca.ca_pem) as running:
        yield running


def issue(ca: trustme.CA, key_type: trustme.KeyType = ECDSA) -> trustme.LeafCert:
    return ca.issue_cert("client@example.test", common_name=CN, key_type=key_type)


def pem_files(leaf: trustme.LeafCert, directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "client.pem", directory / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def subject_of(leaf: trustme.LeafCert) -> str:
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).subject.rfc4514_string()


def s_client(server: HandshakeServer, case: ServerCase, leaf: trustme.LeafCert | None,
             directory: Path, *extra: str, keep_stdin_open: bool = False):
    """One `openssl s_client` handshake; (what the server saw, seconds, exit status)."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", *extra]
    if leaf is not None:
        cert, key = pem_files(leaf, directory)
        argv += ["-cert", str(cert), "-key", str(key)]
    server.arm(case)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    if not keep_stdin_open:
        proc.stdin.close()  # s_client ends on EOF of its input, too
    try:
        returncode = proc.wait(timeout=20)
    finally:
        proc.kill()
        proc.wait()
        if keep_stdin_open:
            proc.stdin.close()
    elapsed = time.monotonic() - start
    return server.collect(), elapsed, returncode


@dataclass
class ClientView:
    """What a pyOpenSSL client saw of its own handshake."""

    version: str | None = None
    cipher: str | None = None
    scheme_code: int | None = None  # first 2 bytes of the CertificateVerify it sent
    before_verify: int = 0  # TLS 1.2: bytes of the handshake messages before it
    clean_close: bool = False  # the server's close_notify arrived
    error: str | None = None
    messages: list[tuple[int, int, int]] = field(default_factory=list)


def py_client(server: HandshakeServer, case: ServerCase, leaf: trustme.LeafCert | None,
              trust: trustme.CA):
    """One handshake by a pyOpenSSL client that counts its transcript itself."""
    view = ClientView()

    def on_message(write_p, version, content_type, buf, length, ssl, arg) -> None:
        if content_type != 22 or not length:
            return
        head = bytes(ffi.buffer(buf, min(length, 6)))
        view.messages.append((write_p, head[0], length))
        if write_p and head[0] == 15 and view.scheme_code is None:
            view.scheme_code = int.from_bytes(head[4:6], "big")
        elif view.scheme_code is None and head[0] != 0:
            view.before_verify += length

    callback = ffi.callback("void(int, int, int, void *, size_t, SSL *, void *)", on_message)
    ctx = SSL.Context(SSL.TLS_METHOD)
    if leaf is not None:
        leaf.configure_cert(ctx)
    trust.configure_trust(ctx)
    ctx.set_verify(SSL.VERIFY_PEER)
    lib.SSL_CTX_set_msg_callback(ctx._context, callback)
    server.arm(case)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.settimeout(None)  # OpenSSL needs a blocking socket; the server ends it
            conn = SSL.Connection(ctx, sock)
            conn.set_connect_state()
            try:
                conn.do_handshake()
                view.version, view.cipher = conn.get_protocol_version_name(), conn.get_cipher_name()
                conn.recv(1024)
            except SSL.ZeroReturnError:
                view.clean_close = True
            except SSL.Error as exc:
                view.error = repr(exc)
    finally:
        seen = server.collect()
    return seen, view


# -- handshakes that work ----------------------------------------------------------------------


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
@pytest.mark.parametrize("key_type, scheme", [(ECDSA, "ecdsa_secp256r1_sha256"),
                                              (RSA, "rsa_pss_rsae_sha256")], ids=["p256", "rsa"])
def test_s_client_handshake_is_reported_from_its_messages(server, ca, tmp_path, tls,
                                                          key_type, scheme):
    leaf = issue(ca.ca, key_type)
    seen, elapsed, returncode = s_client(server, ServerCase(tls), leaf, tmp_path)
    assert returncode == 0
    assert seen.accepted and seen.connected and seen.error is None
    assert seen.negotiated_version == f"TLSv{tls.value}"
    assert seen.signature_scheme == scheme
    assert seen.client_subject == subject_of(leaf) and seen.client_subject.startswith(f"CN={CN},")
    if tls is TLSVersion.TLS13:  # OpenSSL's first choice: TLS_AES_256_GCM_SHA384
        assert seen.cipher == "TLS_AES_256_GCM_SHA384" and seen.signed_bytes == 64 + 34 + 48
    else:
        assert seen.cipher and seen.cipher.startswith("ECDHE-ECDSA-")
        assert seen.signed_bytes and seen.signed_bytes > 1000  # the whole transcript


def test_tls13_signed_bytes_follow_the_suite_hash(server, ca, tmp_path):
    leaf = issue(ca.ca)
    sha256, _, _ = s_client(server, ServerCase(TLSVersion.TLS13), leaf, tmp_path,
                            "-ciphersuites", "TLS_AES_128_GCM_SHA256")
    sha384, _, _ = s_client(server, ServerCase(TLSVersion.TLS13), leaf, tmp_path,
                            "-ciphersuites", "TLS_AES_256_GCM_SHA384")
    assert (sha256.cipher, sha256.signed_bytes) == ("TLS_AES_128_GCM_SHA256", 130)
    assert (sha384.cipher, sha384.signed_bytes) == ("TLS_AES_256_GCM_SHA384", 146)


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
@pytest.mark.parametrize("key_type", [ECDSA, RSA], ids=["p256", "rsa"])
def test_server_and_client_agree_on_what_the_client_signed(server, ca, tls, key_type):
    seen, view = py_client(server, ServerCase(tls), issue(ca.ca, key_type), ca.ca)
    assert seen.accepted and view.error is None, (seen.error, view.error)
    assert (seen.negotiated_version, seen.cipher) == (view.version, view.cipher)
    assert seen.signature_scheme == server_module.SIGNATURE_SCHEMES[view.scheme_code]
    if tls is TLSVersion.TLS12:  # the client's own count of the transcript it signed
        assert seen.signed_bytes == view.before_verify
        assert view.before_verify == sum(length for _, t, length in view.messages[
            :[(w, t) for w, t, _ in view.messages].index((1, 15))])
    else:
        assert seen.signed_bytes == 64 + 34 + (48 if view.cipher.endswith("SHA384") else 32)


def test_the_server_closes_at_once_after_the_handshake(server, ca, tmp_path):
    # s_client's input stays open: only the server's close_notify can end it
    seen, elapsed, returncode = s_client(server, ServerCase(TLSVersion.TLS13), issue(ca.ca),
                                         tmp_path, keep_stdin_open=True)
    assert seen.accepted and returncode == 0 and elapsed < 5
    _, view = py_client(server, ServerCase(TLSVersion.TLS12), issue(ca.ca), ca.ca)
    assert view.clean_close  # a close_notify, not a bare end of the connection


def test_one_server_serves_case_after_case_on_one_port(server, ca):
    port = server.port
    versions = []
    for tls in (TLSVersion.TLS12, TLSVersion.TLS13, TLSVersion.TLS12):
        seen, _ = py_client(server, ServerCase(tls), issue(ca.ca), ca.ca)
        assert seen.accepted, seen.error
        versions.append(seen.negotiated_version)
    assert versions == ["TLSv1.2", "TLSv1.3", "TLSv1.2"] and server.port == port


# -- the case's configuration ----------------------------------------------------------------


def test_forced_scheme_restricts_the_client_signature(server, ca, tmp_path):
    leaf = issue(ca.ca, RSA)
    free, _, _ = s_client(server, ServerCase(TLSVersion.TLS12), leaf, tmp_path)
    forced, _, _ = s_client(server, ServerCase(TLSVersion.TLS12, "rsa_pkcs1_sha256"), leaf,
                            tmp_path)
    assert free.accepted and free.signature_scheme == "rsa_pss_rsae_sha256"  # negative control
    assert forced.accepted and forced.signature_scheme == "rsa_pkcs1_sha256"


def test_forced_scheme_the_client_key_cannot_meet_is_refused(server, ca, tmp_path):
    # An ECDSA key cannot make rsa_pkcs1_sha256; the server's own ECDSA scheme,
    # which it keeps to sign, must not let the client through.
    ecdsa, view = py_client(server, ServerCase(TLSVersion.TLS12, "rsa_pkcs1_sha256"),
                            issue(ca.ca, ECDSA), ca.ca)
    assert not ecdsa.accepted and ecdsa.client_subject is None
    assert ecdsa.signature_scheme == "ecdsa_secp256r1_sha256"
    assert "does not allow (only rsa_pkcs1_sha256)" in ecdsa.error
    assert not view.clean_close  # refused: no close_notify
    # TLS 1.3 has no rsa_pkcs1 signatures at all: the RSA client sends no certificate
    rsa13, _, _ = s_client(server, ServerCase(TLSVersion.TLS13, "rsa_pkcs1_sha256"),
                           issue(ca.ca, RSA), tmp_path)
    assert not rsa13.accepted and rsa13.signature_scheme is None
    assert "peer did not return a certificate" in rsa13.error


def test_padding_ca_names_grow_the_certificate_request_exactly(server, ca, tmp_path):
    padding = ca_names_from(padding_file(tmp_path, 1000))
    sizes = {}
    for names in ((), padding):
        seen, view = py_client(server, ServerCase(TLSVersion.TLS12, ca_names=names),
                               issue(ca.ca), ca.ca)
        assert seen.accepted, seen.error
        assert seen.signed_bytes == view.before_verify
        sizes[len(names)] = {m.msg_type: m.length for m in seen.messages if m.direction == "out"}
    certs = x509.load_pem_x509_certificates(padding_file(tmp_path, 1000).read_bytes())
    assert sizes[len(padding)][13] - sizes[0][13] == sum(names_size(c) for c in certs)
    default, _ = py_client(server, ServerCase(TLSVersion.TLS12), issue(ca.ca), ca.ca)
    chain = {m.msg_type: m.length for m in default.messages if m.direction == "out"}
    assert chain[11] > sizes[0][11]  # by default the CA goes with the server certificate


# -- negative controls ----------------------------------------------------------------------------


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
def test_client_certificate_from_another_ca_is_rejected(server, ca, tmp_path, tls):
    seen, _, _ = s_client(server, ServerCase(tls), issue(trustme.CA()), tmp_path)
    assert seen.connected and not seen.accepted
    assert seen.client_subject is None
    assert seen.error and "certificate verify failed" in seen.error


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
def test_client_without_certificate_is_rejected(server, ca, tmp_path, tls):
    seen, _, _ = s_client(server, ServerCase(tls), None, tmp_path)
    assert seen.connected and not seen.accepted
    assert seen.signature_scheme is None and seen.signed_bytes is None
    assert "peer did not return a certificate" in seen.error


def test_no_client_is_seen_as_not_connected_without_waiting(server):
    server.arm(ServerCase(TLSVersion.TLS13))
    start = time.monotonic()
    seen = server.collect()
    assert not seen.connected and not seen.accepted
    assert time.monotonic() - start < 1


def test_an_exception_in_the_server_thread_reaches_the_collector(server, ca, tmp_path):
    leaf = issue(ca.ca, RSA)
    with pytest.raises(ServerError, match="cannot allow client signature schemes 'no_such'"):
        s_client(server, ServerCase(TLSVersion.TLS12, "no_such"), leaf, tmp_path)
    seen, _, _ = s_client(server, ServerCase(TLSVersion.TLS12), leaf, tmp_path)
    assert seen.accepted  # the server serves the next case


def test_collect_without_arm_is_a_harness_error(server):
    with pytest.raises(ServerError, match="was not armed"):
        server.collect()


def test_server_that_cannot_start_raises_at_once(ca, tmp_path):
    server = HandshakeServer(cert_pem=tmp_path / "missing.pem", key_pem=ca.server_key_pem,
                             client_ca_pem=ca.ca_pem)
    start = time.monotonic()
    with pytest.raises(ServerError, match="cannot load its certificate"):
        server.start()
    assert time.monotonic() - start < 1


def test_missing_message_callback_is_one_clear_line(ca, monkeypatch):
    class WithoutCallback:  # a cryptography build that does not expose the callback
        pass

    monkeypatch.setattr(server_module, "lib", WithoutCallback())
    server = HandshakeServer(cert_pem=ca.server_cert_pem, key_pem=ca.server_key_pem,
                             client_ca_pem=ca.ca_pem)
    with pytest.raises(ServerError, match="does not expose SSL_CTX_set_msg_callback") as info:
        server.start()
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert server.start() > 0  # negative control: the real bindings have it
    server.stop()
