"""What every TLS client gets (a HandshakeJob) and gives back (a ClientResult)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harness.clients.logs import client_error
from harness.process import ProcessResult
from harness.tls.server import ServerObservation
from harness.tls.version import TLSVersion


@dataclass(frozen=True)
class ClientOptions:
    """The few user options a client is built from (the rest of the settings,
    module, token and PIN, reach it per handshake in a HandshakeJob)."""

    java_homes: tuple[str, ...] = ()  # --java, repeatable: the first is the default JDK
    java_p11_config: tuple[str, ...] = ()  # --java-p11-config lines
    read_only: bool = False  # --p11-existing / --p11-key: clients open read-only sessions

    @property
    def java_home(self) -> str | None:
        return self.java_homes[0] if self.java_homes else None


@dataclass(frozen=True)
class HandshakeJob:
    """Everything one client needs for one TLS client-auth handshake."""

    host: str
    port: int
    tls: TLSVersion
    module: Path  # the PKCS#11 module the client must load, and only that one
    token_label: str
    pin: str = field(repr=False)
    key_label: str
    key_id_hex: str
    cert_pem: Path  # the client certificate (also on the token under the same CKA_ID)
    ca_pem: Path  # the CA that issued the server certificate
    log_path: Path
    timeout_s: float = 20.0
    env: dict[str, str] = field(default_factory=dict)  # e.g. SOFTHSM2_CONF
    # The harness's server certificate and key, for a client that brings its own
    # peer (an openvpn server, hostapd) instead of the harness's server.
    server_cert_pem: Path | None = None
    server_key_pem: Path | None = None
    # The host's copy of an imported private key (a cryptography key), for the
    # software control only; never printed, never written.
    private_key: Any = field(default=None, repr=False, compare=False)

    @property
    def key_uri(self) -> str:
        """RFC 7512 URI of the private key (without the PIN)."""
        return (
            f"pkcs11:token={pct(self.token_label)};"
            f"id={pct_bytes(bytes.fromhex(self.key_id_hex))};type=private"
        )


def pct(text: str) -> str:
    """Percent-encode a URI path attribute value (RFC 7512 pchar)."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
    return "".join(c if c in safe else pct_bytes(c.encode()) for c in text)


def pct_bytes(data: bytes) -> str:
    return "".join(f"%{b:02x}" for b in data)


@dataclass(frozen=True)
class ClientResult:
    """What the client process did; the server's view is reported separately."""

    client: str
    returncode: int | None
    timed_out: bool
    duration_s: float
    log_path: Path
    error: str | None = None  # the client's own error line, CKR code if it printed one
    # What the client's own peer saw (Client.own_peer); None for the harness's server
    peer: ServerObservation | None = None
    peer_log: Path | None = None  # that peer's own log

    @classmethod
    def from_process(cls, client: str, proc: ProcessResult) -> ClientResult:
        """The result of a client that is one process per handshake."""
        return cls(
            client=client, returncode=proc.returncode, timed_out=proc.timed_out,
            duration_s=proc.duration_s, log_path=proc.log_path,
            error=None if proc.returncode == 0 else client_error(proc.log_path),
        )


class Client(abc.ABC):
    """One TLS client implementation (a program driven by the harness)."""

    name: str = ""  # as in test ids: openssl-engine, gnutls, ...
    marker: str = ""  # pytest marker: openssl_engine, gnutls, ...
    # Set for a client whose peer is a real server of its own (openvpn, hostapd),
    # not the harness's server: what that peer is, for the record. Its results
    # carry the peer's observation (ClientResult.peer).
    own_peer: ClassVar[str | None] = None

    @classmethod
    def from_options(cls, options: ClientOptions) -> Client:
        """The client as the user configured it (most clients take no options)."""
        return cls()

    @abc.abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when the client can run here, else why not (for a skip)."""

    @abc.abstractmethod
    def version(self) -> str:
        """Version string for the report header."""

    def components(self) -> dict[str, str | None]:
        """Component -> version (harness.versions.COMPONENTS) for the facts keyed
        to versions; None for a part whose version was not detected."""
        return {}

    @abc.abstractmethod
    def handshake(self, job: HandshakeJob) -> ClientResult:
        """Run one full handshake; never raise for a failed handshake."""

    def close(self) -> None:  # noqa: B027 - optional hook, most clients hold nothing
        """Release long-lived resources (a warm JVM); default: nothing."""
