"""The reference TLS server: in this process, client certificate required,
and what it saw read from the handshake messages themselves.

One HandshakeServer serves a whole run, one case at a time: a daemon thread
on 127.0.0.1 (port 0) takes the case the runner arms (TLS version, client
schemes it allows, CA names it sends), serves the one connection the client
makes, and reports it when the runner collects. It is pyOpenSSL on the
OpenSSL that cryptography bundles, so it is the same server on every
distribution. OpenSSL's message callback hands it every handshake message
as bytes: the client's CertificateVerify scheme is the first two bytes of
that message's body, and what the client signs follows from the messages
before it. A handshake the server rejects is an observation; an exception in
the server's thread is a harness error raised to whoever collects the case.
"""

from __future__ import annotations

import queue
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi, lib

from harness.errors import HarnessError
from harness.tls.version import TLSVersion

# IANA TLS SignatureScheme registry: code -> name.
SIGNATURE_SCHEMES: dict[int, str] = {
    0x0201: "rsa_pkcs1_sha1", 0x0203: "ecdsa_sha1",
    0x0301: "rsa_pkcs1_sha224", 0x0303: "ecdsa_sha224",
    0x0401: "rsa_pkcs1_sha256", 0x0403: "ecdsa_secp256r1_sha256",
    0x0501: "rsa_pkcs1_sha384", 0x0503: "ecdsa_secp384r1_sha384",
    0x0601: "rsa_pkcs1_sha512", 0x0603: "ecdsa_secp521r1_sha512",
    0x0804: "rsa_pss_rsae_sha256", 0x0805: "rsa_pss_rsae_sha384",
    0x0806: "rsa_pss_rsae_sha512", 0x0807: "ed25519", 0x0808: "ed448",
    0x0809: "rsa_pss_pss_sha256", 0x080A: "rsa_pss_pss_sha384", 0x080B: "rsa_pss_pss_sha512",
    0x081A: "ecdsa_brainpoolP256r1tls13_sha256", 0x081B: "ecdsa_brainpoolP384r1tls13_sha384",
    0x081C: "ecdsa_brainpoolP512r1tls13_sha512",
}

HANDSHAKE_TYPES: dict[int, str] = {
    0: "HelloRequest", 1: "ClientHello", 2: "ServerHello", 4: "NewSessionTicket",
    5: "EndOfEarlyData", 8: "EncryptedExtensions", 11: "Certificate",
    12: "ServerKeyExchange", 13: "CertificateRequest", 14: "ServerHelloDone",
    15: "CertificateVerify", 16: "ClientKeyExchange", 20: "Finished", 24: "KeyUpdate",
}

_HANDSHAKE = 22  # record content type; OpenSSL also reports pseudo types (headers)
_CERTIFICATE_VERIFY = 15
_SERVER_HELLO = 2
_HELLO_REQUEST = 0
# TLS 1.3 signs 64 spaces, "TLS 1.3, client CertificateVerify", a 0 byte, the transcript hash.
_TLS13_PREFIX = 64 + 34
_SSL_MODE_NO_AUTO_CHAIN = 0x8  # not among pyOpenSSL's constants
_MSG_CALLBACK = "void(int, int, int, void *, size_t, SSL *, void *)"
_GRACE_S = 1.0  # once the client is done: longest the server waits for its last bytes
_VERSIONS = {TLSVersion.TLS12: SSL.TLS1_2_VERSION, TLSVersion.TLS13: SSL.TLS1_3_VERSION}


class ServerError(HarnessError):
    """The server could not start or failed: the harness is broken, not the token."""


@dataclass(frozen=True)
class HandshakeMessage:
    """One handshake message as the server sent ("out") or received ("in") it."""

    direction: str
    msg_type: int
    length: int  # including the 4-byte header

    def __str__(self) -> str:
        name = HANDSHAKE_TYPES.get(self.msg_type, f"type {self.msg_type}")
        return f"{'->' if self.direction == 'out' else '<-'} {name} ({self.length} B)"


@dataclass(frozen=True)
class ServerObservation:
    """What the server saw of one handshake."""

    accepted: bool  # handshake completed with a verified client certificate
    negotiated_version: str | None  # "TLSv1.2" / "TLSv1.3"
    cipher: str | None
    signature_scheme: str | None  # client CertificateVerify, IANA name
    client_subject: str | None  # RFC 4514, e.g. "CN=p11tls-..."
    error: str | None  # why the server rejected the handshake, if it did
    connected: bool  # the client reached the server at all
    signed_bytes: int | None = None  # bytes the client's CertificateVerify signs
    messages: tuple[HandshakeMessage, ...] = ()


@dataclass(frozen=True)
class ServerCase:
    """How the server behaves for one case."""

    tls: TLSVersion
    client_sigalgs: str | None = None  # e.g. "rsa_pkcs1_sha256": the only client schemes
    # None: name the trusted CAs and send the server's chain; else name exactly
    # these names (none for an empty tuple) and send the server certificate alone.
    ca_names: tuple[x509.Name, ...] | None = None
    log_path: Path | None = None
    timeout_s: float = 20.0  # longest a connected client may take
    # A certificate already on a token (read-only mode): accept its chain whatever
    # CA issued it (the CertificateVerify is still verified against it) and name
    # these issuers in the CertificateRequest too (Java and NSS choose by them).
    client_issuers: tuple[x509.Name, ...] | None = None


@dataclass
class _Transcript:
    """Filled by the message callback during one connection."""

    messages: list[HandshakeMessage] = field(default_factory=list)
    scheme: str | None = None
    before_verify: int = 0  # TLS 1.2: bytes of the messages before the CertificateVerify
    received: bool = False
    failure: BaseException | None = None  # raised in the callback, re-raised in the thread

    def add(self, write_p: int, content_type: int, data: bytes, length: int) -> None:
        if not write_p:
            self.received = True
        if content_type != _HANDSHAKE or not data:
            return
        message = HandshakeMessage("out" if write_p else "in", data[0], length)
        self.messages.append(message)
        if message.direction == "in" and message.msg_type == _CERTIFICATE_VERIFY:
            if self.scheme is None:
                code = int.from_bytes(data[4:6], "big")
                self.scheme = SIGNATURE_SCHEMES.get(code, f"0x{code:04x}")
        elif self.scheme is None and message.msg_type != _HELLO_REQUEST:
            self.before_verify += length


_STOP = object()


class HandshakeServer:
    """The run's TLS server: start once, then arm → client → collect per case."""

    def __init__(self, *, cert_pem: Path, key_pem: Path, client_ca_pem: Path) -> None:
        """cert_pem/key_pem: the server's identity; client_ca_pem: the CA(s)
        that client certificates must chain to."""
        self._paths = (cert_pem, key_pem, client_ca_pem)
        self.port = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._cases: queue.Queue[object] = queue.Queue()
        self._results: queue.Queue[tuple[int, object]] = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._woken = threading.Event()  # the runner is collecting: the client is done
        self._stopping = threading.Event()
        self._contexts: dict[tuple[object, ...], SSL.Context] = {}
        self._transcript = _Transcript()
        self._callback: Any = None  # the ffi callback: must live as long as the contexts
        self._armed = 0  # sequence number of the armed case, 0 when none
        self._sequence = 0

    # -- runner side ---------------------------------------------------------------
    def start(self) -> int:
        """Load the identity, listen, start the thread; return the port.
        Raise ServerError at once when any of it fails."""
        if self._thread is not None:
            return self.port
        if not hasattr(lib, "SSL_CTX_set_msg_callback") or not hasattr(
                lib, "SSL_CTX_set1_sigalgs_list"):
            raise ServerError("this cryptography build does not expose SSL_CTX_set_msg_callback "
                              "and SSL_CTX_set1_sigalgs_list: install cryptography>=42")
        cert_pem, key_pem, client_ca_pem = self._paths
        try:
            self._cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
            self._key = serialization.load_pem_private_key(key_pem.read_bytes(), None)
            self._trusted = x509.load_pem_x509_certificates(client_ca_pem.read_bytes())
        except (OSError, ValueError) as exc:
            raise ServerError(f"the TLS server cannot load its certificate, key or "
                              f"client CA: {exc}") from exc
        self._own_scheme = own_scheme(self._key)
        self._callback = ffi.callback(_MSG_CALLBACK, self._on_message)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="p11tls-server", daemon=True)
        self._thread.start()
        return self.port

    def arm(self, case: ServerCase) -> None:
        """Serve `case` to the next client that connects."""
        if self._thread is None or not self._thread.is_alive():
            raise ServerError("the TLS server is not running")
        if self._armed:
            raise ServerError("the TLS server is armed already: collect the last case first")
        self._drain_stale_connections()
        self._woken.clear()
        while select.select([self._wake_r], [], [], 0)[0]:
            self._wake_r.recv(64)
        self._sequence += 1
        self._armed = self._sequence
        self._cases.put((self._sequence, case))

    def collect(self) -> ServerObservation:
        """After the client is done: what the server saw. Raise ServerError
        when the server's thread failed on this case."""
        if not self._armed:
            raise ServerError("the TLS server was not armed")
        self._woken.set()
        self._wake_w.send(b"!")
        deadline = time.monotonic() + 2 * _GRACE_S + 5
        try:
            while True:  # skip what a case collected too late reported after all
                sequence, result = self._results.get(timeout=max(0, deadline - time.monotonic()))
                if sequence == self._armed:
                    break
        except queue.Empty:
            raise ServerError("the TLS server did not report the case in time") from None
        finally:
            self._armed = 0
        if isinstance(result, BaseException):
            raise ServerError(f"the TLS server failed: {type(result).__name__}: "
                              f"{result}") from result
        assert isinstance(result, ServerObservation)
        return result

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._stopping.set()
            self._cases.put(_STOP)
            self._wake_w.send(b"!")
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> HandshakeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _drain_stale_connections(self) -> None:
        """Close connections left from an earlier case (a client that retried):
        they must not be taken for this case's client. The thread is idle here."""
        assert self._listener is not None
        while select.select([self._listener], [], [], 0)[0]:
            stale, _ = self._listener.accept()
            stale.close()

    # -- the server's thread -------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            item = self._cases.get()
            if item is _STOP:
                return
            assert isinstance(item, tuple)
            sequence, case = item
            try:
                result: object = self._serve_case(case)
            except BaseException as exc:  # noqa: BLE001 - it belongs to the collector
                result = exc
            self._results.put((sequence, result))

    def _serve_case(self, case: ServerCase) -> ServerObservation:
        try:
            context: SSL.Context | None = self._context(case)
            problem: Exception | None = None
        except Exception as exc:  # noqa: BLE001 - raised once the client is sent away
            context, problem = None, exc
        sock = self._accept()
        if context is None:
            if sock is not None:
                sock.close()
            assert problem is not None
            raise problem
        if sock is None:
            seen = ServerObservation(False, None, None, None, None, None, connected=False)
        else:
            with sock:
                seen = self._handshake(context, sock, case)
        if case.log_path is not None:
            write_log(case, seen, self._own_scheme)
        return seen

    def _accept(self) -> socket.socket | None:
        """The case's connection, or None when the runner collects without one."""
        assert self._listener is not None
        while True:
            ready, _, _ = select.select([self._listener, self._wake_r], [], [])
            if self._listener in ready:
                return self._listener.accept()[0]
            if self._wake_r in ready:
                self._wake_r.recv(64)
                if self._stopping.is_set():
                    return None
                if self._woken.is_set():  # one last look: a client may just have connected
                    if select.select([self._listener], [], [], 0)[0]:
                        return self._listener.accept()[0]
                    return None

    def _context(self, case: ServerCase) -> SSL.Context:
        key = (case.tls, case.client_sigalgs, case.ca_names, case.client_issuers)
        if key not in self._contexts:
            self._contexts[key] = self._new_context(case)
        return self._contexts[key]

    def _new_context(self, case: ServerCase) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(_VERSIONS[case.tls])
        ctx.set_max_proto_version(_VERSIONS[case.tls])
        ctx.use_privatekey(self._key)  # type: ignore[arg-type]
        ctx.use_certificate(self._cert)
        ctx.check_privatekey()
        store = ctx.get_cert_store()
        assert store is not None
        for ca in self._trusted:
            store.add_cert(crypto.X509.from_cryptography(ca))
        mode = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        if case.client_issuers is not None:
            ctx.set_verify(mode, accept_any_chain)
        else:
            ctx.set_verify(mode)
        ctx.set_options(SSL.OP_NO_TICKET)  # nothing to resume: no ticket after the handshake
        names = ([c.subject for c in self._trusted] if case.ca_names is None
                 else list(case.ca_names))
        names += [n for n in case.client_issuers or () if n not in names]
        set_ca_names(ctx, names)
        if case.ca_names is not None:  # the sweep: only the padding grows the transcript
            ctx.set_mode(_SSL_MODE_NO_AUTO_CHAIN)
        if case.client_sigalgs:
            # One list serves both ends: the CertificateRequest offers it to the
            # client and the server signs with one of it, so it gets its own scheme
            # too; a client scheme outside the case's list is refused afterwards.
            allowed = case.client_sigalgs.split(":")
            if not set(allowed) <= set(SIGNATURE_SCHEMES.values()):
                raise ServerError(f"the server cannot allow client signature schemes "
                                  f"{case.client_sigalgs!r}: give IANA names, e.g. "
                                  f"rsa_pkcs1_sha256")
            schemes = ":".join(dict.fromkeys([*allowed, self._own_scheme]))
            if lib.SSL_CTX_set1_sigalgs_list(ctx._context, schemes.encode()) != 1:
                lib.ERR_clear_error()
                raise ServerError(f"the server cannot allow client signature schemes "
                                  f"{case.client_sigalgs!r}")
        lib.SSL_CTX_set_msg_callback(ctx._context, self._callback)
        return ctx

    def _on_message(self, write_p: int, version: int, content_type: int, buf: Any,
                    length: int, ssl: Any, arg: Any) -> None:
        """OpenSSL's message callback: must not raise (it could not tell anyone)."""
        try:
            data = bytes(ffi.buffer(buf, min(length, 6))) if length else b""
            self._transcript.add(write_p, content_type, data, length)
        except BaseException as exc:  # noqa: BLE001 - re-raised by _handshake
            self._transcript.failure = exc

    def _handshake(self, context: SSL.Context, sock: socket.socket,
                   case: ServerCase) -> ServerObservation:
        transcript = self._transcript = _Transcript()
        sock.setblocking(False)
        conn = SSL.Connection(context, sock)
        conn.set_accept_state()
        deadline = time.monotonic() + case.timeout_s
        error: str | None = None
        try:
            self._pump(conn, sock, conn.do_handshake, deadline)
        except SSL.Error as exc:
            error = ssl_error_text(exc)
        except TimeoutError:
            error = "timed out waiting for the client"
        if transcript.failure is not None:
            raise transcript.failure
        done = error is None
        version = cipher = subject = None
        hello_sent = any(m.direction == "out" and m.msg_type == _SERVER_HELLO
                         for m in transcript.messages)
        if hello_sent:
            version = conn.get_protocol_version_name()
            cipher = conn.get_cipher_name()
        if done:
            peer = conn.get_peer_certificate()  # as X509: works on every pyOpenSSL >= 24
            subject = peer.to_cryptography().subject.rfc4514_string() if peer else None
            allowed = case.client_sigalgs.split(":") if case.client_sigalgs else None
            if allowed is not None and transcript.scheme not in allowed:
                done = False
                error = (f"the client signed with {transcript.scheme}, which the server "
                         f"does not allow (only {case.client_sigalgs})")
        self._close(conn if done else None, sock, deadline)
        return ServerObservation(
            accepted=done and subject is not None,
            negotiated_version=version,
            cipher=cipher,
            signature_scheme=transcript.scheme,
            client_subject=subject if done else None,
            error=error,
            connected=transcript.received,
            signed_bytes=signed_bytes(transcript, version, cipher),
            messages=tuple(transcript.messages),
        )

    def _pump(self, conn: SSL.Connection, sock: socket.socket, step: Any,
              deadline: float) -> Any:
        """Run a non-blocking OpenSSL step to its end, waiting on the socket;
        once the runner collects, the client is done: a short grace is left."""
        while True:
            try:
                return step()
            except SSL.WantReadError:
                want_write = False
            except SSL.WantWriteError:
                want_write = True
            if self._woken.is_set():
                deadline = min(deadline, time.monotonic() + _GRACE_S)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            readers = [self._wake_r] if not self._woken.is_set() else []
            select.select(readers + ([] if want_write else [sock]),
                          [sock] if want_write else [], [], remaining)

    def _close(self, conn: SSL.Connection | None, sock: socket.socket, deadline: float) -> None:
        """After an accepted handshake a close_notify at once, so the client
        ends; then, either way, wait briefly for the client's end of the
        connection: closing on its unread bytes would reset the connection
        before the client has read the close_notify or the server's alert."""
        try:
            if conn is not None:
                conn.shutdown()
            sock.shutdown(socket.SHUT_WR)
            end = min(deadline, time.monotonic() + _GRACE_S)
            while time.monotonic() < end:
                readable, _, _ = select.select([sock, self._wake_r], [], [],
                                               max(0.0, end - time.monotonic()))
                if sock in readable:
                    if not sock.recv(4096):
                        return
                elif self._woken.is_set():  # the client is done and keeps its end open
                    return
        except (SSL.Error, OSError):
            pass  # the client has gone already


def accept_any_chain(conn: Any, cert: Any, errnum: int, depth: int, ok: int) -> bool:
    """Verify callback of the read-only mode: the token's certificate chains to a
    CA the harness does not have; the chain is accepted, while OpenSSL still
    checks the client's CertificateVerify signature with its public key."""
    return True


def own_scheme(key: Any) -> str:
    """The scheme the server signs with, which a sigalgs list must keep."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ecdsa_secp256r1_sha256", "secp384r1": "ecdsa_secp384r1_sha384",
                "secp521r1": "ecdsa_secp521r1_sha512"}[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa_pss_rsae_sha256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ed448.Ed448PrivateKey):
        return "ed448"
    raise ServerError(f"the server cannot sign with a {type(key).__name__}")


def signed_bytes(transcript: _Transcript, version: str | None, cipher: str | None) -> int | None:
    """How many bytes the client's CertificateVerify signed: in TLS 1.2 the
    handshake messages before it; in TLS 1.3 a fixed prefix and the transcript
    hash, whose length the cipher suite's hash sets."""
    if transcript.scheme is None:
        return None
    if version == "TLSv1.3":
        return _TLS13_PREFIX + (48 if (cipher or "").endswith("SHA384") else 32)
    return transcript.before_verify


def ssl_error_text(exc: SSL.Error) -> str:
    """OpenSSL's reasons, e.g. "certificate verify failed"; or the socket error."""
    if isinstance(exc, SSL.ZeroReturnError):
        return "the client closed the connection"
    if isinstance(exc, SSL.SysCallError):
        return f"connection error: {exc.args[-1] if exc.args else 'unexpected EOF'}"
    reasons = [entry[2] for entry in (exc.args[0] if exc.args else [])
               if isinstance(entry, tuple) and len(entry) == 3 and entry[2]]
    return "; ".join(dict.fromkeys(reasons)) or str(exc) or type(exc).__name__


def write_log(case: ServerCase, seen: ServerObservation, own: str) -> None:
    """The case's server log: what it was asked to do and every handshake message."""
    assert case.log_path is not None
    lines = [f"server: TLS {case.tls.value}, signs with {own}, client certificate required"]
    if case.client_sigalgs:
        lines.append(f"client schemes allowed: {case.client_sigalgs}")
    if case.ca_names is not None:
        lines.append(f"CA names sent: {len(case.ca_names)} padding CA(s), no chain")
    lines += [str(m) for m in seen.messages]
    lines.append(f"connected={seen.connected} accepted={seen.accepted} "
                 f"version={seen.negotiated_version} cipher={seen.cipher}")
    lines.append(f"client scheme={seen.signature_scheme} signed_bytes={seen.signed_bytes} "
                 f"subject={seen.client_subject}")
    if seen.error:
        lines.append(f"error: {seen.error}")
    case.log_path.parent.mkdir(parents=True, exist_ok=True)
    case.log_path.write_text("\n".join(lines) + "\n")


def ca_names_from(path: Path) -> tuple[x509.Name, ...]:
    """The subjects of a PEM file's CAs, for the CertificateRequest (none for an empty file)."""
    data = path.read_bytes()
    return tuple(c.subject for c in x509.load_pem_x509_certificates(data)) if data.strip() else ()


def set_ca_names(ctx: SSL.Context, names: list[x509.Name]) -> None:
    """The CA names of the CertificateRequest, from DER (pyOpenSSL's X509Name
    route is deprecated)."""
    stack = lib.sk_X509_NAME_new_null()
    if stack == ffi.NULL:
        raise MemoryError("sk_X509_NAME_new_null")
    for name in names:
        der = name.public_bytes()
        buf = ffi.new("unsigned char[]", der)
        cursor = ffi.new("unsigned char **", buf)
        parsed = lib.d2i_X509_NAME(ffi.NULL, cursor, len(der))
        if parsed == ffi.NULL or not lib.sk_X509_NAME_push(stack, parsed):
            lib.ERR_clear_error()
            raise ServerError(f"the server cannot name CA {name.rfc4514_string()!r}")
    lib.SSL_CTX_set_client_CA_list(ctx._context, stack)  # the context owns the stack now
