"""The `software` control: the same certificate and private key, used directly
by pyOpenSSL in this process, without the token.

When the token's cells of a row fail while this one passes, the CA, the
certificate and the server are fine and the fault is on the token path. Only
imported keys have a copy on the host (generated keys never leave the token),
so the control exists for Provisioning.IMPORT only. It makes no PKCS#11 call,
so it has no signing record.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.errors import HarnessError
from harness.tls.version import TLSVersion

NEEDS_IMPORT = "software control needs an imported key (generated keys never leave the token)"
_T = TypeVar("_T")


class _Timeout(Exception):
    """The handshake ran past job.timeout_s."""


def _proto_version(tls: TLSVersion) -> int:
    from OpenSSL import SSL

    return {TLSVersion.TLS12: SSL.TLS1_2_VERSION, TLSVersion.TLS13: SSL.TLS1_3_VERSION}[tls]


def ssl_error_text(exc: BaseException) -> str:
    """One line for a pyOpenSSL error: the OpenSSL reasons, or what the socket said."""
    from OpenSSL import SSL

    if isinstance(exc, SSL.SysCallError):
        code, text = (exc.args + (None, None))[:2]
        return f"connection closed by the server ({text or code})"
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [str(entry[-1]) for entry in exc.args[0] if entry]
        if reasons:
            return "; ".join(reasons)
    return f"{type(exc).__name__}: {exc}"


class SoftwareClient(Client):
    name = "software"
    marker = "software"

    def unavailable_reason(self) -> str | None:
        try:
            from OpenSSL import SSL  # noqa: F401
        except ImportError:
            return "pyOpenSSL cannot be imported: install pyOpenSSL"
        return None

    def version(self) -> str:
        import OpenSSL
        from OpenSSL import SSL

        linked = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
        return f"pyOpenSSL {OpenSSL.__version__} ({linked})"

    def handshake(self, job: HandshakeJob) -> ClientResult:
        if job.private_key is None:
            raise HarnessError(NEEDS_IMPORT)
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"software client ({self.version()}): TLS {job.tls.value} to "
                 f"{job.host}:{job.port}, certificate {job.cert_pem.name}, "
                 "private key from memory (never written)"]
        start = time.monotonic()
        error: str | None = None
        timed_out = False
        try:
            lines += self._connect(job, start + job.timeout_s)
        except (_Timeout, TimeoutError):
            timed_out = True
            error = f"timed out after {job.timeout_s:g} s"
        except OSError as exc:  # refused, reset, ...
            error = f"{type(exc).__name__}: {exc.strerror or exc}"
        except Exception as exc:  # noqa: BLE001 - pyOpenSSL errors: a failed handshake
            error = ssl_error_text(exc)
        duration = time.monotonic() - start
        lines.append(f"error: {error}" if error else "handshake ok")
        job.log_path.write_text("\n".join(lines) + "\n")
        return ClientResult(
            client=self.name, returncode=None if timed_out else (1 if error else 0),
            timed_out=timed_out, duration_s=duration, log_path=job.log_path, error=error)

    def _connect(self, job: HandshakeJob, deadline: float) -> list[str]:
        """Handshake, close_notify, then read until the server closes; the log lines."""
        from OpenSSL import SSL, crypto

        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(_proto_version(job.tls))
        context.set_max_proto_version(_proto_version(job.tls))
        context.load_verify_locations(str(job.ca_pem))
        context.set_verify(SSL.VERIFY_PEER)
        context.use_certificate_file(str(job.cert_pem))
        # No check_privatekey: the server, not the client, is to judge the signature.
        try:  # a cryptography key, straight from memory (pyOpenSSL >= 24.3)
            context.use_privatekey(job.private_key)
        except TypeError:  # older pyOpenSSL takes its own PKey only
            context.use_privatekey(crypto.PKey.from_cryptography_key(job.private_key))
        with socket.create_connection((job.host, job.port), timeout=_left(deadline)) as sock:
            sock.setblocking(False)  # every wait below is bounded by the deadline
            conn = SSL.Connection(context, sock)
            conn.set_connect_state()
            _retry(conn.do_handshake, sock, deadline)
            log = [f"negotiated {conn.get_protocol_version_name()} {conn.get_cipher_name()}"]
            # TLS 1.3: the server judges the client's certificate after the
            # handshake is complete here; a rejection arrives as an alert on read.
            _retry(conn.shutdown, sock, deadline)  # our close_notify
            while True:
                try:
                    _retry(lambda: conn.recv(4096), sock, deadline)
                except SSL.ZeroReturnError:  # the server's close_notify
                    break
                except SSL.SysCallError as exc:
                    if exc.args and exc.args[0] == -1:  # EOF without close_notify
                        break
                    raise
            log.append("server closed the connection")
            return log


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Timeout
    return left


def _retry(operation: Callable[[], _T], sock: socket.socket, deadline: float) -> _T:
    """Run a pyOpenSSL operation on a non-blocking socket until it completes."""
    from OpenSSL import SSL

    while True:
        try:
            return operation()
        except SSL.WantReadError:
            waits: tuple[list[Any], list[Any]] = ([sock], [])
        except SSL.WantWriteError:
            waits = ([], [sock])
        ready = select.select(*waits, [], _left(deadline))
        if not any(ready):
            raise _Timeout
