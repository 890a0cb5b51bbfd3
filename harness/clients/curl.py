"""The distribution's `curl` (OpenSSL backend) with its key on the token.

curl reaches PKCS#11 through whichever OpenSSL path it supports here: from
curl 8.12 on, with pkcs11-provider installed, the provider (`--key-type PROV`,
key by RFC 7512 URI, certificate from the PEM file: curl loads certificates
from providers only as files); else the libp11 engine (`--engine pkcs11`, key
and certificate by URI from the token, PKCS11_MODULE_PATH naming the module).

curl loads the provider into a library context of its own, which (curl 8.14)
reads no OpenSSL configuration file: an OPENSSL_CONF section never reaches the
provider, which then falls back to p11-kit's proxy (bypassing the module under
test) and prompts for the PIN on a terminal it has not. So the module comes
from the provider's PKCS11_PROVIDER_MODULE variable and the PIN from a file
named by the URI's RFC 7512 `pin-source` attribute.

The PIN never reaches argv: curl reads it as `pass` from a config file (`-K`),
which it hands to the engine's PIN prompt; the provider reads it from the file
`pin-source` names. Both files are 0600 in a private directory removed after
the run.

The harness's server closes the connection after the handshake without
HTTP, so curl reports an error after a handshake that worked; the server's
view decides the case, and that error is marked as coming after the handshake.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from dataclasses import replace
from pathlib import Path

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.clients.openssl_provider import find_provider
from harness.installed import LIBP11_ENGINE, find_library
from harness.process import base_env, run_logged
from harness.versions import command_version, first_version, in_range, package_version

PROVIDER_SINCE = ">=8.12"  # CURLOPT_SSLKEYTYPE "PROV"
# What curl says when the server hung up after the handshake without HTTP.
_AFTER_HANDSHAKE = re.compile(r"curl: \((52|56)\)")
_CURL_ERROR = re.compile(r"^curl: \(\d+\) .*$", re.MULTILINE)


def curl_version() -> str | None:
    found = shutil.which("curl")
    return first_version(_version_line(found)) if found else None


def openssl_backend() -> bool:
    """Whether curl's TLS backend is OpenSSL (Debian's curl: yes)."""
    found = shutil.which("curl")
    return found is not None and "OpenSSL/" in _version_line(found)


@functools.lru_cache(maxsize=4)
def _version_line(curl: str) -> str:
    """`curl --version`'s first line, once per binary: every case asks."""
    try:
        out = subprocess.run([curl, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


@functools.lru_cache(maxsize=4)
def _path(curl: str | None) -> str | None:
    version = first_version(_version_line(curl)) if curl else None
    if version and in_range(version, PROVIDER_SINCE) and find_provider() is not None:
        return "provider"
    if find_library(*LIBP11_ENGINE) is not None:
        return "engine"
    return None


class CurlClient(Client):
    name = "curl"
    marker = "curl"

    def path(self) -> str | None:
        """`provider` or `engine`: how this curl reaches the token; None: no way."""
        return _path(shutil.which("curl"))

    @property
    def cert_from_file(self) -> bool:
        """A key with no certificate on the token can run: only the provider
        path takes the certificate from a file (the engine path's is the token's)."""
        return self.path() == "provider"

    def unavailable_reason(self) -> str | None:
        if shutil.which("curl") is None:
            return "curl not found: install curl"
        if not openssl_backend():
            return "curl is not built with OpenSSL: install Debian's curl"
        if self.path() is None:
            return ("neither the libp11 engine nor (curl >= 8.12) pkcs11-provider found: "
                    "install libengine-pkcs11-openssl or pkcs11-provider")
        return None

    def version(self) -> str:
        return f"curl {curl_version() or '?'} (OpenSSL), {self.path() or 'no PKCS#11 path'}"

    def components(self) -> dict[str, str | None]:
        found = {"curl": curl_version(), "openssl": command_version(["openssl", "version"])}
        if self.path() == "provider":
            found["pkcs11-provider"] = package_version(find_provider())
        else:
            found["libp11"] = package_version(find_library(*LIBP11_ENGINE))
        return found

    def handshake(self, job: HandshakeJob) -> ClientResult:
        curl = shutil.which("curl") or "curl"
        tls = job.tls.value
        argv = [curl, "-v", "-sS", "-o", "/dev/null", "--cacert", str(job.ca_pem),
                f"--tlsv{tls}", "--tls-max", tls, "--max-time", f"{job.timeout_s:g}"]
        env = dict(job.env)
        with tempfile.TemporaryDirectory(prefix="p11tls-curl-") as private:
            if self.path() == "provider":
                pin_file = Path(private) / "pin"
                pin_file.touch(mode=0o600)
                pin_file.write_text(job.pin)
                env["PKCS11_PROVIDER_MODULE"] = str(job.module)
                argv += ["--key-type", "PROV", "--key", with_pin_source(job.key_uri, pin_file),
                         "--cert", str(job.cert_pem)]
            else:
                config = Path(private) / "curlrc"
                config.touch(mode=0o600)
                # curl hands `pass` to the engine's PIN prompt; quoted for curl's parser
                config.write_text(f'pass = "{_quote(job.pin)}"\n')
                env["PKCS11_MODULE_PATH"] = str(job.module)
                cert_uri = job.key_uri.replace(";type=private", ";type=cert")
                argv = [argv[0], "-K", str(config), *argv[1:],
                        "--engine", "pkcs11", "--key-type", "ENG", "--key", job.key_uri,
                        "--cert-type", "ENG", "--cert", cert_uri]
            argv.append(f"https://{job.host}:{job.port}/")
            proc = run_logged(argv, env=base_env(env), log_path=job.log_path,
                              timeout=job.timeout_s + 2)
        result = ClientResult.from_process(self.name, proc)
        return replace(result, error=curl_error(job.log_path, result.error))


def curl_error(log_path: Path, fallback: str | None) -> str | None:
    """curl's own error line; one the server's hang-up causes after the
    handshake says so (the server's view decides whether the handshake worked)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return fallback
    found = _CURL_ERROR.findall(text)
    if not found:
        return fallback
    line = found[-1].strip()
    if _AFTER_HANDSHAKE.match(line) and "SSL connection using" in text:
        return f"{line} (after the TLS handshake: the harness's server sends no HTTP)"
    return fallback if fallback and fallback.startswith("CKR_") else line


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def with_pin_source(uri: str, pin_file: Path) -> str:
    """The key URI with RFC 7512's `pin-source` naming the PIN file (the path, never the PIN)."""
    source = "pin-source=file:" + urllib.parse.quote(str(pin_file), safe="/")
    return f"{uri}&{source}" if "?" in uri else f"{uri}?{source}"
