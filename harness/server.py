"""A local TLS server that requires a client certificate and reports what it saw.

It is `openssl s_server -trace` on 127.0.0.1, port 0, for exactly one
connection: OpenSSL's trace shows the client's CertificateVerify signature
scheme, which no Python TLS API exposes, and `-client_sigalgs` can restrict
the schemes the client may use. Failing to start is a harness error raised
at once; a handshake the server rejects is an observation, not an exception.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from harness.clients.logs import short_openssl_error
from harness.errors import HarnessError, ToolMissing
from harness.process import kill_group, wait_for
from harness.tls import TLSVersion


@dataclass(frozen=True)
class ServerObservation:
    """What the server saw of one handshake."""

    accepted: bool  # handshake completed with a verified client certificate
    negotiated_version: str | None  # "TLSv1.2" / "TLSv1.3"
    cipher: str | None
    signature_scheme: str | None  # client CertificateVerify, IANA name
    client_subject: str | None
    error: str | None  # the server's first error line, if any
    connected: bool  # the client reached the server at all


class ServerError(HarnessError):
    """The server could not start or died: the harness is broken, not the token."""


def openssl_binary() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise ToolMissing("openssl not found: install openssl (scripts/setup-system.sh)")
    return path


class HandshakeServer:
    """One `openssl s_server` for one client-auth handshake."""

    def __init__(
        self,
        *,
        cert_pem: Path,
        key_pem: Path,
        client_ca_pem: Path,
        tls: TLSVersion,
        log_path: Path,
        client_sigalgs: str | None = None,
        ca_names_pem: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """client_ca_pem verifies client certificates. By default the server
        also names that CA in its CertificateRequest and sends it in its chain;
        with ca_names_pem it names exactly the CAs of that file (none for an
        empty file) and sends only its own certificate (the transcript-size sweep)."""
        names = ca_names_pem or client_ca_pem
        # s_server refuses an empty -CAfile; without one it names no CA at all
        named = ["-CAfile", str(names)] if names.stat().st_size else []
        self.argv = [
            openssl_binary(), "s_server", "-accept", "0", "-naccept", "1",
            "-cert", str(cert_pem), "-key", str(key_pem),
            "-verifyCAfile", str(client_ca_pem), *named,
            "-Verify", "1", "-verify_return_error", tls.openssl_flag, "-trace",
        ]
        if client_sigalgs:
            self.argv += ["-client_sigalgs", client_sigalgs]
        self.argv += list(extra_args)
        self.log_path = log_path
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, timeout_s: float = 10.0) -> int:
        """Start and return the port; raise ServerError if it does not listen."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # stdin stays open: s_server ends early on EOF.
        self._proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.01):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(1)
                kill_group(self._proc)
                tail = " | ".join(self._lines[-3:]) or "no output"
                raise ServerError(f"openssl s_server did not start listening: {tail}")
        return self.port

    def _read(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        with open(self.log_path, "w") as log:
            log.write("$ " + " ".join(self.argv) + "\n")
            for raw in stream:
                line = raw.decode(errors="replace")
                log.write(line)
                self._lines.append(line.rstrip("\n"))
                if not self._ready.is_set() and line.startswith("ACCEPT"):
                    match = re.search(r":(\d+)\s*$", line)
                    if match:
                        self.port = int(match.group(1))
                        self._ready.set()

    def finish(self, grace_s: float = 3.0) -> ServerObservation:
        """After the client is done: wait for the server to end, then parse what it saw."""
        assert self._proc is not None and self._reader is not None
        connected = any(line.startswith("Received Record") for line in self._lines)
        if not wait_for(self._proc, grace_s if connected else 0.05):
            kill_group(self._proc)
        self._reader.join(5)
        return parse_trace(self._lines)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            kill_group(self._proc)


_SIG_RE = re.compile(r"Signature Algorithm: (\S+) \(0x[0-9a-fA-F]+\)")


def parse_trace(lines: list[str]) -> ServerObservation:
    """Read an `s_server -trace` transcript of one connection."""
    direction = ""
    in_server_hello = False
    tls13 = False
    legacy_version: str | None = None
    scheme: str | None = None
    cipher = subject = error = None
    for line in lines:
        if line.startswith(("Sent Record", "Received Record")):
            direction = line.split()[0]
            in_server_hello = False
            continue
        stripped = line.strip()
        if stripped.startswith("ServerHello,") and direction == "Sent":
            in_server_hello = True
        elif in_server_hello and stripped.startswith("server_version="):
            legacy_version = stripped.split("(")[-1].rstrip(")")
        elif in_server_hello and stripped == "TLS 1.3 (772)":
            tls13 = True
        elif stripped.startswith("CertificateVerify") and direction == "Received":
            scheme = ""  # the next Signature Algorithm line is the client's
        elif scheme == "" and (m := _SIG_RE.search(line)):
            scheme = m.group(1)
        elif line.startswith("CIPHER is "):
            cipher = line[len("CIPHER is "):].strip()
        elif line.startswith("subject="):
            subject = line[len("subject="):].strip()
        elif error is None and ":error:" in line:
            error = short_openssl_error(line)
    version = "TLSv1.3" if tls13 else (legacy_version.replace("TLS ", "TLSv") if legacy_version else None)
    connected = any(line.startswith("Received Record") for line in lines)
    return ServerObservation(
        accepted=cipher is not None and subject is not None,
        negotiated_version=version if connected else None,
        cipher=cipher,
        signature_scheme=scheme or None,
        client_subject=subject,
        error=error,
        connected=connected,
    )
