"""EAP-TLS (802.1X, enterprise Wi-Fi): wpa_supplicant's `eapol_test` against
hostapd's built-in RADIUS server, both from Debian (eapoltest, hostapd).

No wireless hardware: eapol_test speaks RADIUS over UDP on 127.0.0.1 to a
throw-away hostapd (`driver=none`, port chosen at run time, the harness's
server certificate and CA, `* TLS` as the only user). The key comes from the
token through the libp11 engine by RFC 7512 URI (`engine=1`,
`engine_id="pkcs11"`, `key_id`), the module being the one the harness hands
it (PKCS11_MODULE_PATH: wpa_supplicant refuses a pkcs11_module_path outside
/usr/lib/); the certificate from its PEM file. TLS 1.2 or 1.3
through phase1's tls_disable_tlsv1_x and hostapd's tls_flags.

The PIN: wpa_supplicant reads it from the network block (`pin`), so it is in
a 0600 configuration file in a private directory removed after the run,
never argv. eapol_test always prints its configuration values, the PIN
included, so its output is masked before it reaches the case's log.

hostapd's debug log gives the negotiated version, the cipher suite and the
verified client certificate; it does not name the client's signature
scheme, so the runner derives it from the token's signing call.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.clients.logs import client_error
from harness.clients.openvpn import free_port
from harness.errors import HarnessError
from harness.installed import LIBP11_ENGINE, find_library
from harness.process import base_env, kill_group
from harness.tls.server import ServerObservation
from harness.versions import command_version, package_version

SECRET = "testing123"  # RADIUS shared secret between the two, on loopback only
_READY = "interface state UNINITIALIZED->ENABLED"
_VERSION = re.compile(r"SSL: Using TLS version (TLSv1\.[23])")
_CIPHER = re.compile(r"Server selected cipher suite (0x[0-9a-fA-F]{4})")
_SUBJECT = re.compile(r"authsrv: peer certificate: depth=0 .*subject=(\S.*)$", re.MULTILINE)
_ACCEPT = "Sending Access-Accept"
_SERVER_ERROR = re.compile(r"^(.*(?:alert|verify error|failed|Reject).*)$",
                           re.MULTILINE | re.IGNORECASE)

SERVER_CONFIG = """\
driver=none
logger_stdout=-1
logger_stdout_level=0
radius_server_clients={clients}
radius_server_auth_port={port}
eap_server=1
eap_user_file={users}
ca_cert={ca}
server_cert={cert}
private_key={key}
tls_flags={flags}
"""
CLIENT_CONFIG = """\
pkcs11_engine_path={engine}
network={{
  key_mgmt=IEEE8021X
  eap=TLS
  identity="p11tls"
  ca_cert="{ca}"
  client_cert="{cert}"
  engine=1
  engine_id="pkcs11"
  key_id="{key_uri}"
  pin="{pin}"
  phase1="{phase1}"
}}
"""
_PHASE1 = {"1.2": "tls_disable_tlsv1_0=1 tls_disable_tlsv1_1=1 tls_disable_tlsv1_3=1",
           "1.3": "tls_disable_tlsv1_0=1 tls_disable_tlsv1_1=1 tls_disable_tlsv1_2=1 "
                  "tls_disable_tlsv1_3=0"}
_FLAGS = {"1.2": "[DISABLE-TLSv1.3]", "1.3": "[ENABLE-TLSv1.3][DISABLE-TLSv1.2]"}


def masked(text: str, pin: str) -> str:
    """eapol_test's output without the PIN: the hexdump of the `pin` value
    (its header line and the dump lines after it) and any copy of the PIN."""
    lines = text.splitlines()
    out: list[str] = []
    skip = 0
    for line in lines:
        if skip:
            skip -= 1
            out.append("    [PIN masked]")
            continue
        found = re.match(r"pin - hexdump_ascii\(len=(\d+)\):", line)
        if found:
            skip = (int(found.group(1)) + 15) // 16
        out.append(line)
    result = "\n".join(out) + "\n"
    if pin:
        result = result.replace(pin, "[PIN masked]")
    return result


class EAPTLSClient(Client):
    """eapol_test (wpa_supplicant) with the libp11 engine, against hostapd's RADIUS server."""

    name = "eap-tls"
    marker = "eap_tls"
    own_peer = "hostapd RADIUS server"

    def unavailable_reason(self) -> str | None:
        if shutil.which("eapol_test") is None:
            return "eapol_test not found: install eapoltest"
        if shutil.which("hostapd") is None:
            return "hostapd not found: install hostapd"
        if find_library(*LIBP11_ENGINE) is None:
            return "libp11 engine (engines-3/pkcs11.so) not found: install libengine-pkcs11-openssl"
        return None

    def version(self) -> str:
        return (f"eapol_test {command_version(['eapol_test', '-v']) or '?'}, hostapd "
                f"{command_version(['hostapd', '-v']) or '?'}, libp11 engine")

    def components(self) -> dict[str, str | None]:
        return {"openssl": command_version(["openssl", "version"]),
                "libp11": package_version(find_library(*LIBP11_ENGINE)),
                "wpa_supplicant": command_version(["eapol_test", "-v"]),
                "hostapd": command_version(["hostapd", "-v"])}

    def handshake(self, job: HandshakeJob) -> ClientResult:
        if job.server_cert_pem is None or job.server_key_pem is None:
            raise HarnessError("eap-tls needs the harness's server certificate and key")
        if any(c in job.pin for c in '"\n'):
            raise HarnessError("eap-tls: wpa_supplicant cannot take a PIN with a double quote "
                               "or a line break in its configuration")
        logs = job.log_path.parent
        logs.mkdir(parents=True, exist_ok=True)
        server_log = logs / "hostapd.log"
        start = time.monotonic()
        deadline = start + job.timeout_s
        tls = job.tls.value
        with tempfile.TemporaryDirectory(prefix="p11tls-eap-tls-") as private:
            directory = Path(private)
            port = free_port()
            (directory / "clients").write_text(f"127.0.0.1/32 {SECRET}\n")
            (directory / "users").write_text("* TLS\n")
            (directory / "hostapd.conf").write_text(SERVER_CONFIG.format(
                clients=directory / "clients", port=port, users=directory / "users",
                ca=job.ca_pem, cert=job.server_cert_pem, key=job.server_key_pem,
                flags=_FLAGS[tls]))
            client_conf = directory / "eapol.conf"
            client_conf.touch(mode=0o600)
            client_conf.write_text(CLIENT_CONFIG.format(
                engine=find_library(*LIBP11_ENGINE), ca=job.ca_pem,
                cert=job.cert_pem, key_uri=job.key_uri, pin=job.pin, phase1=_PHASE1[tls]))
            # wpa_supplicant loads a pkcs11_module_path only from below /usr/lib/ (Debian
            # 2.10: "Not in trusted path"); without one, libp11 takes PKCS11_MODULE_PATH
            env = base_env({**job.env, "PKCS11_MODULE_PATH": str(job.module)})
            argv = ["eapol_test", "-c", str(client_conf), "-a", "127.0.0.1", "-p", str(port),
                    "-s", SECRET, "-t", f"{max(int(job.timeout_s), 1)}"]
            with open(server_log, "wb") as slog:
                server = subprocess.Popen(["hostapd", "-d", str(directory / "hostapd.conf")],
                                          stdout=slog, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True, stdin=subprocess.DEVNULL)
                try:
                    while _READY not in server_log.read_text(errors="replace"):
                        if server.poll() is not None or time.monotonic() > deadline:
                            raise HarnessError("hostapd did not start: " + server_log.read_text(
                                errors="replace")[-500:])
                        time.sleep(0.02)
                    # raw output (it holds the PIN) in the private directory, masked below
                    raw = directory / "eapol_test.out"
                    with open(raw, "wb") as out:
                        # line-buffered, so that a give-up line is seen at once
                        stdbuf = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
                        proc = subprocess.Popen(stdbuf + argv, env=env, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True,
                                                stdin=subprocess.DEVNULL)
                        try:
                            timed_out = not _wait_done(proc, raw, deadline)
                        finally:
                            kill_group(proc)
                    output, returncode = raw.read_bytes(), proc.returncode
                finally:
                    kill_group(server)
        job.log_path.write_text(f"$ {' '.join(argv)}\n"
                                + masked(output.decode(errors="replace"), job.pin))
        seen = observation(server_log.read_text(errors="replace"))
        error = None
        if not seen.accepted or returncode != 0:
            error = client_error(job.log_path) or seen.error or "EAP-TLS failed"
        return ClientResult(client=self.name, returncode=returncode, timed_out=timed_out,
                            duration_s=time.monotonic() - start, log_path=job.log_path,
                            error=error, peer=seen, peer_log=server_log)


# eapol_test lines after which it only waits out its timeout
_GIVEN_UP = re.compile(rb"ENGINE: cannot load private key|Failed to initialize|"
                       rb"CTRL-EVENT-EAP-FAILURE|EAP: Received EAP-Failure")


def _wait_done(proc: subprocess.Popen[bytes], output: Path, deadline: float) -> bool:
    """Whether eapol_test ended (or gave up) before the deadline."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return True
        if _GIVEN_UP.search(output.read_bytes()):
            time.sleep(0.05)  # its last lines
            return True
        time.sleep(0.02)
    return False


def observation(log: str) -> ServerObservation:
    """What hostapd's debug log says of the EAP-TLS handshake."""
    versions = _VERSION.findall(log)
    cipher = _CIPHER.search(log)
    subject = _SUBJECT.search(log)
    accepted = _ACCEPT in log
    error = None
    if not accepted:
        found = _SERVER_ERROR.search(log)
        error = found.group(1).strip() if found else "hostapd saw no EAP-TLS handshake"
    return ServerObservation(
        accepted=accepted, negotiated_version=versions[-1] if versions else None,
        cipher=cipher.group(1) if cipher else None, signature_scheme=None,
        client_subject=(subject.group(1).strip().lstrip("/").replace("/", ",")
                        if subject else None),
        error=error, connected="RADIUS SRV: Received" in log)
