"""OpenVPN with pkcs11-helper: the distribution's openvpn client against a
throw-away openvpn server of its own.

The peer is a real `openvpn` server, not the harness's server: `dev null` (no
tun device, as OpenVPN's own tests/t_cltsrv.sh), TCP on 127.0.0.1 on a port
chosen at run time, the harness's server certificate and CA, the case's TLS
version through tls-version-min/max. The client takes its key through
pkcs11-helper: `pkcs11-providers` is the module the harness hands it (the
recording interposer) and `pkcs11-id` the key's serialized id. pkcs11-helper
hashes on the host and signs with CKM_ECDSA, CKM_RSA_PKCS, CKM_RSA_PKCS_PSS or
CKM_RSA_X_509, falling back to C_SignRecover when a key does not allow C_Sign.

The PIN goes through the management interface (management-query-passwords)
on a Unix socket in a private directory: never argv, never a file. It is
answered once: a second request (the PIN was refused) stops the client, so
the token sees one wrong C_Login, never a retry.

The server's log gives the negotiated version, cipher and the client's
verified certificate; openvpn 2.6 does not log the client's signature scheme,
so the runner derives it from the token's signing call and says so.
"""

from __future__ import annotations

import functools
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.clients.logs import client_error
from harness.errors import HarnessError
from harness.installed import find_library
from harness.process import base_env, kill_group
from harness.tls.server import ServerObservation
from harness.versions import command_version, package_version

PKCS11_HELPER = ("libpkcs11-helper.so.1",)
_CONTROL = re.compile(r"Control Channel: (TLSv1\.[23]), cipher \S+ (\S+),")
_VERIFIED = re.compile(r"VERIFY OK: depth=0, (.+)$", re.MULTILINE)
_SERVER_ERROR = re.compile(r"(VERIFY ERROR.*|TLS Error: .*|TLS_ERROR.*|.*SSL routines.*)$",
                           re.MULTILINE)
_ACCEPTED = "Peer Connection Initiated"
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")  # openvpn's log line prefix
_LISTENING = "Listening for incoming TCP connection"

SERVER_CONFIG = """\
dev null
proto tcp-server
local 127.0.0.1
lport {port}
tls-server
ca {ca}
cert {cert}
key {key}
dh none
tls-version-min {tls}
tls-version-max {tls}
tls-exit
hand-window {window}
verb 3
"""
CLIENT_CONFIG = """\
dev null
proto tcp-client
remote 127.0.0.1 {port}
tls-client
ca {ca}
# the harness's server certificate (trustme) has no CN, only O and OU
x509-username-field OU
pkcs11-providers {module}
pkcs11-id '{pkcs11_id}'
management {socket} unix
management-query-passwords
tls-exit
hand-window {window}
connect-retry-max 1
verb 3
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quote(text: str) -> str:
    """A management-interface string: double quotes, backslash escapes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=1)
def _openvpn_version() -> str | None:
    return command_version(["openvpn", "--version"])


class OpenVPNClient(Client):
    """openvpn --client side with pkcs11-helper, against a throw-away openvpn server."""

    name = "openvpn"
    marker = "openvpn"
    own_peer = "openvpn server"

    def __init__(self) -> None:
        self._token_ids: dict[tuple[str, str], str] = {}  # (module, token) -> serialized token

    def unavailable_reason(self) -> str | None:
        if shutil.which("openvpn") is None:
            return "openvpn not found: install openvpn"
        if find_library(*PKCS11_HELPER) is None:
            return "pkcs11-helper not found: install libpkcs11-helper1"
        return None

    def version(self) -> str:
        return (f"openvpn {_openvpn_version() or '?'}, pkcs11-helper "
                f"{package_version(find_library(*PKCS11_HELPER)) or '?'}")

    def components(self) -> dict[str, str | None]:
        return {"openssl": command_version(["openssl", "version"]),
                "openvpn": _openvpn_version(),
                "pkcs11-helper": package_version(find_library(*PKCS11_HELPER))}

    def pkcs11_id(self, job: HandshakeJob) -> str:
        """pkcs11-helper's serialized id of the key: the token's part as
        `openvpn --show-pkcs11-ids` prints it (listed once per token: public
        objects, no login), then the key's CKA_ID in hex."""
        slot = (str(job.module), job.token_label)
        if slot not in self._token_ids:
            proc = subprocess.run(["openvpn", "--show-pkcs11-ids", str(job.module)],
                                  env=base_env(job.env), capture_output=True, text=True,
                                  timeout=job.timeout_s, check=False)
            for line in proc.stdout.splitlines():
                found = re.search(r"Serialized id:\s+(\S+)", line)
                if found:
                    parts = found.group(1).split("/")
                    if len(parts) == 5 and _unescape(parts[3]) == job.token_label:
                        self._token_ids[slot] = "/".join(parts[:4])
                        break
            else:
                raise HarnessError(f"openvpn --show-pkcs11-ids lists no certificate on token "
                                   f"{job.token_label!r}: {proc.stdout[-300:]!r}")
        return f"{self._token_ids[slot]}/{job.key_id_hex}"

    def handshake(self, job: HandshakeJob) -> ClientResult:
        if job.server_cert_pem is None or job.server_key_pem is None:
            raise HarnessError("openvpn needs the harness's server certificate and key")
        logs = job.log_path.parent
        logs.mkdir(parents=True, exist_ok=True)
        server_log = logs / "openvpn-server.log"
        window = max(int(job.timeout_s), 5)
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="p11tls-openvpn-") as private:
            port = free_port()
            config = Path(private)
            (config / "server.conf").write_text(SERVER_CONFIG.format(
                port=port, ca=job.ca_pem, cert=job.server_cert_pem, key=job.server_key_pem,
                tls=job.tls.value, window=window))
            management = config / "management.sock"
            (config / "client.conf").write_text(CLIENT_CONFIG.format(
                port=port, ca=job.ca_pem, module=job.module, pkcs11_id=self.pkcs11_id(job),
                socket=management, window=window))
            env = base_env(job.env)
            deadline = start + job.timeout_s
            with open(server_log, "wb") as slog, open(job.log_path, "wb") as clog:
                server = subprocess.Popen(["openvpn", "--config", str(config / "server.conf")],
                                          stdout=slog, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True, stdin=subprocess.DEVNULL)
                client: subprocess.Popen[bytes] | None = None
                try:
                    if not _wait_for(server_log, _LISTENING, server, deadline):
                        raise HarnessError(f"the openvpn server did not start: "
                                           f"{server_log.read_text(errors='replace')[-500:]}")
                    clog.write(f"$ openvpn --config {config / 'client.conf'}\n".encode())
                    clog.flush()
                    client = subprocess.Popen(
                        ["openvpn", "--config", str(config / "client.conf")], stdout=clog,
                        stderr=subprocess.STDOUT, env=env, start_new_session=True,
                        stdin=subprocess.DEVNULL)
                    refused = _answer_pin_once(management, job.pin, client, server_log,
                                               deadline)
                    done = refused or _wait_for(server_log, _ACCEPTED, client, deadline,
                                                server)
                    timed_out = not done and time.monotonic() >= deadline
                finally:
                    for proc in (client, server):
                        if proc is not None:
                            kill_group(proc)
            returncode = client.returncode if client is not None else None
        seen = observation(server_log.read_text(errors="replace"))
        error = None if seen.accepted else _STAMP.sub(
            "", client_error(job.log_path) or seen.error or "no handshake")
        if refused and not seen.accepted:
            error = f"{error} (the PIN was asked for again: not retried)"
        return ClientResult(client=self.name, returncode=returncode, timed_out=timed_out,
                            duration_s=time.monotonic() - start, log_path=job.log_path,
                            error=error, peer=seen, peer_log=server_log)


def _unescape(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], deadline: float,
              other: subprocess.Popen[bytes] | None = None) -> bool:
    """Whether `text` appears in the log before the deadline and while the
    processes run (a process that exited has said all it will)."""
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return True
        if proc.poll() is not None or (other is not None and other.poll() is not None):
            return text in log.read_text(errors="replace")
        time.sleep(0.02)
    return False


def _answer_pin_once(management: Path, pin: str, client: subprocess.Popen[bytes],
                     server_log: Path, deadline: float) -> bool:
    """Answer the client's first PIN request on the management socket; True
    when it asks again (the PIN was refused: the harness never sends it twice)."""
    sock: socket.socket | None = None
    while sock is None and time.monotonic() < deadline and client.poll() is None:
        attempt = socket.socket(socket.AF_UNIX)
        try:
            attempt.connect(str(management))
            sock = attempt
        except OSError:
            attempt.close()
            time.sleep(0.02)
    if sock is None:
        return False
    answered = False
    buffer = b""
    with sock:
        while time.monotonic() < deadline and client.poll() is None:
            if _ACCEPTED in server_log.read_text(errors="replace"):
                return False
            sock.settimeout(0.05)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return False
            if not chunk:
                return False
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                found = re.match(rb">PASSWORD:Need '(.*)' password", line)
                if found is None:
                    continue
                if answered:
                    return True
                name = found.group(1).decode(errors="replace")
                sock.sendall(f"password {_quote(name)} {_quote(pin)}\n".encode())
                answered = True
    return False


def observation(log: str) -> ServerObservation:
    """What the openvpn server's log says of the handshake."""
    control = _CONTROL.search(log)
    subject = _VERIFIED.search(log)
    accepted = _ACCEPTED in log
    error = None
    if not accepted:
        found = _SERVER_ERROR.search(log)
        error = found.group(1).strip() if found else "the server saw no handshake"
    return ServerObservation(
        accepted=accepted, negotiated_version=control.group(1) if control else None,
        cipher=control.group(2) if control else None, signature_scheme=None,
        client_subject=subject.group(1).strip() if subject else None, error=error,
        connected="TCP connection established" in log or "Initial packet" in log)
