"""Go's crypto/tls with the key on the token through ThalesIgnite/crypto11.

The bundled go/p11tls_client.go is built once per source into the per-user
cache (like the Java client), offline: Debian packages the Go toolchain
(golang-go) and crypto11 with its dependencies as sources under
/usr/share/gocode, so the build runs with GO111MODULE=off, GOPATH there and
GOPROXY=off: no module is ever downloaded. crypto11 hashes on the host and
signs with CKM_ECDSA, CKM_RSA_PKCS (a host-made DigestInfo) or CKM_RSA_PKCS_PSS.

The PIN is the first line of the client's standard input, never argv.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.clients.java.build import default_cache_dir
from harness.errors import HarnessError
from harness.process import base_env, run_logged
from harness.versions import command_version, package_version

GOCODE = Path("/usr/share/gocode")
CRYPTO11 = GOCODE / "src/github.com/ThalesIgnite/crypto11"
SOURCE = "p11tls_client.go"
BINARY = "p11tls-go"


def find_go_sources() -> Path:
    """go/ at the top of a source checkout; harness/go_src/ in an installed package."""
    package = Path(__file__).resolve().parents[1]  # harness/
    for candidate in (package.parent / "go", package / "go_src"):
        if (candidate / SOURCE).is_file():
            return candidate
    raise HarnessError(f"{SOURCE} not found in {package.parent / 'go'} or {package / 'go_src'}: "
                       "the installation is incomplete; reinstall pkcs11-tls-harness")


def build_env(cache: Path) -> dict[str, str]:
    """An offline GOPATH build: Debian's sources only, nothing downloaded."""
    return base_env({"GO111MODULE": "off", "GOPATH": str(GOCODE), "GOPROXY": "off",
                     "GOFLAGS": "", "GOCACHE": str(cache / "go-build"), "CGO_ENABLED": "1",
                     "GOTOOLCHAIN": "local"})


def build_binary(sources: Path, cache_dir: Path | None = None) -> Path:
    """Build `sources` once into cache_dir/go-<hash of the source and go version>.

    `go build` writes into a private temporary directory renamed into place,
    so parallel workers never run a half-written binary."""
    cache_dir = cache_dir or default_cache_dir()
    go = shutil.which("go") or "go"
    digest = hashlib.sha256(f"{command_version([go, 'version'])}\n".encode())
    digest.update((sources / SOURCE).read_bytes())
    target = cache_dir / f"go-{digest.hexdigest()[:16]}"
    if (target / BINARY).is_file():
        return target / BINARY
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=cache_dir))
    try:
        shutil.copy(sources / SOURCE, work / SOURCE)
        proc = subprocess.run([go, "build", "-o", BINARY, SOURCE], cwd=work,
                              env=build_env(cache_dir), capture_output=True, text=True,
                              timeout=300, check=False)
        if proc.returncode != 0:
            raise HarnessError(f"go build of {sources / SOURCE} failed: "
                               f"{(proc.stderr or proc.stdout).strip()[:2000]}")
        (work / SOURCE).unlink()
        try:
            os.rename(work, target)
        except OSError:
            if not (target / BINARY).is_file():
                raise
            # another worker finished first; its binary is the same
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / BINARY


class GoClient(Client):
    """crypto/tls + crypto11, one process per handshake."""

    name = "go"
    marker = "go"

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir
        self._binary: Path | None = None

    def unavailable_reason(self) -> str | None:
        if shutil.which("go") is None:
            return "go not found: install golang-go"
        if not (CRYPTO11 / "crypto11.go").is_file():
            return (f"crypto11 sources not found in {CRYPTO11}: install "
                    "golang-github-thalesignite-crypto11-dev")
        return None

    def version(self) -> str:
        return (f"go {command_version(['go', 'version']) or '?'}, crypto11 "
                f"{package_version(CRYPTO11 / 'crypto11.go') or '?'}")

    def components(self) -> dict[str, str | None]:
        return {"go": command_version(["go", "version"]),
                "crypto11": package_version(CRYPTO11 / "crypto11.go")}

    def binary(self) -> Path:
        """The built client (built on first use)."""
        if self._binary is None:
            self._binary = build_binary(find_go_sources(), self.cache_dir)
        return self._binary

    def handshake(self, job: HandshakeJob) -> ClientResult:
        argv = [str(self.binary()), "-module", str(job.module), "-token", job.token_label,
                "-id", job.key_id_hex, "-cert", str(job.cert_pem), "-ca", str(job.ca_pem),
                "-host", job.host, "-port", str(job.port), "-tls", job.tls.value,
                "-timeout", f"{job.timeout_s:g}s"]
        proc = run_logged(argv, env=base_env(job.env), log_path=job.log_path,
                          timeout=job.timeout_s + 2, stdin_data=f"{job.pin}\n".encode())
        result = ClientResult.from_process(self.name, proc)
        return replace(result, error=result.error and _fail_line(job.log_path, result.error))


def _fail_line(log_path: Path, fallback: str) -> str:
    """The client's own `fail error=...` line, its CKR code first when it has one."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return fallback
    for line in lines:
        if line.startswith("fail error="):
            text = line[len("fail error="):]
            return fallback if fallback.startswith("CKR_") and fallback in text else text[:300]
    return fallback
