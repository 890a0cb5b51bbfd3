"""Python's own `ssl` module with the key on the token through pkcs11-provider.

This is how `requests`/`urllib3` users reach a token: a key "file" that is a
PEM-wrapped PKCS#11 URI (`-----BEGIN PKCS#11 PROVIDER URI-----`, the format of
pkcs11-provider's tools/uri2pem.py) handed to `SSLContext.load_cert_chain`,
with OpenSSL's configuration loading pkcs11-provider (Debian 13 and later).
The child is this Python (the distribution's, linked to the system OpenSSL)
in isolated mode running a few lines of the standard library only
(CHILD, written next to the PIN file).

The PIN is in a 0600 file in a private directory removed after the
handshake (pkcs11-provider's pkcs11-module-token-pin = file:...), never argv.
"""

from __future__ import annotations

import base64
import ssl
import sys
import tempfile
from pathlib import Path

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.clients.openssl_provider import CONFIG, PROVIDER_MISSING, find_provider
from harness.process import base_env, run_logged
from harness.versions import command_version, package_version

URI_DESCRIPTION = b"PKCS#11 Provider URI v1.0"

CHILD = """\
import socket, ssl, sys
host, port, tls, cert, key, ca, timeout = sys.argv[1:]
version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[tls]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ctx.maximum_version = version
ctx.load_verify_locations(ca)
try:
    ctx.load_cert_chain(cert, key)
except (ssl.SSLError, OSError) as exc:
    sys.exit(f"error: load_cert_chain: {exc}")
with socket.create_connection((host, int(port)), timeout=float(timeout)) as sock:
    try:
        with ctx.wrap_socket(sock, server_hostname=host) as conn:
            try:
                conn.recv(1)  # TLS 1.3: the server's verdict on the client's certificate
            except (ssl.SSLEOFError, ConnectionResetError, TimeoutError):
                pass
            print("ok", conn.version(), conn.cipher()[0])
    except (ssl.SSLError, OSError) as exc:
        sys.exit(f"error: handshake: {exc}")
"""


def _der(tag: int, body: bytes) -> bytes:
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def uri_pem(uri: str) -> str:
    """The PEM key file pkcs11-provider decodes into the token key `uri`:
    SEQUENCE { VisibleString description, UTF8String uri }."""
    der = _der(0x30, _der(0x1A, URI_DESCRIPTION) + _der(0x0C, uri.encode()))
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN PKCS#11 PROVIDER URI-----\n{body}-----END PKCS#11 PROVIDER URI-----\n"


class PythonSSLClient(Client):
    """Python's ssl (this interpreter's OpenSSL) with pkcs11-provider."""

    name = "python-ssl"
    marker = "python_ssl"

    def unavailable_reason(self) -> str | None:
        if find_provider() is None:
            return PROVIDER_MISSING
        if ssl.OPENSSL_VERSION_INFO < (3,):
            return f"Python's ssl is built on {ssl.OPENSSL_VERSION}: providers need OpenSSL 3"
        return None

    def version(self) -> str:
        return f"Python {sys.version.split()[0]} ssl ({ssl.OPENSSL_VERSION}), pkcs11-provider"

    def components(self) -> dict[str, str | None]:
        return {"python": sys.version.split()[0],
                "openssl": command_version(["openssl", "version"]),
                "pkcs11-provider": package_version(find_provider())}

    def handshake(self, job: HandshakeJob) -> ClientResult:
        with tempfile.TemporaryDirectory(prefix="p11tls-python-ssl-") as private:
            directory = Path(private)
            pin_file = directory / "pin"
            pin_file.touch(mode=0o600)
            pin_file.write_text(job.pin)
            conf = directory / "openssl.cnf"
            conf.write_text(CONFIG.format(provider=find_provider(), module=job.module,
                                          pin_file=pin_file))
            key = directory / "key.pem"
            key.write_text(uri_pem(job.key_uri))
            script = directory / "client.py"
            script.write_text(CHILD)
            argv = [sys.executable, "-I", str(script), job.host, str(job.port), job.tls.value,
                    str(job.cert_pem), str(key), str(job.ca_pem), f"{job.timeout_s:g}"]
            env = base_env({**job.env, "OPENSSL_CONF": str(conf)})
            proc = run_logged(argv, env=env, log_path=job.log_path, timeout=job.timeout_s + 2)
        return ClientResult.from_process(self.name, proc)
