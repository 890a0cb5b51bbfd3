"""NSS's `tstclnt` (libnss3-tools) with the key and certificate on the token.

Each client object keeps a throw-away NSS database per (module, CA): the CA is
trusted for servers, and the module (the job's, i.e. the interposer) is listed
in the database's pkcs11.txt. Writing that entry instead of running `modutil
-add` keeps the module out of this set-up: modutil would load it, and its
calls would land in the case's record. tstclnt finds the client certificate by
its nickname `TOKEN:LABEL` (the harness labels the certificate like the key),
the private key by the certificate's CKA_ID, and reads the PIN (-W) from a
pipe in a private directory that answers the first read only (pin_once.py:
with a wrong PIN tstclnt would try it six times) and is removed afterwards.

NSS's own PKCS#11 log of the module (NSS_DEBUG_PKCS11_MODULE) is kept per case
as nss-pkcs11.log next to the client log.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.clients.pin_once import pin_once
from harness.errors import HarnessError
from harness.explain import masking as pin_masking
from harness.process import base_env, run_logged
from harness.versions import package_version

INSTALL_HINT = "install libnss3-tools"
MODULE_NAME = "p11tls"  # the module's name in the database (and in NSS's debug log)
DEBUG_LOG = "nss-pkcs11.log"
TOOLS = ("tstclnt", "certutil")


class NSSClient(Client):
    name = "nss"
    marker = "nss"

    def __init__(self) -> None:
        self._root: Path | None = None
        self._databases: dict[tuple[str, str], Path] = {}
        self._lock = threading.Lock()

    def unavailable_reason(self) -> str | None:
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            return f"{' and '.join(missing)} not found: {INSTALL_HINT}"
        return None

    def version(self) -> str:
        return f"NSS {nss_version() or '(version not detected)'}, tstclnt"

    def components(self) -> dict[str, str | None]:
        return {"nss": nss_version()}

    def handshake(self, job: HandshakeJob) -> ClientResult:
        database = self.database(job.module, job.ca_pem)
        nickname = f"{job.token_label}:{job.key_label}"
        debug_log = job.log_path.parent / DEBUG_LOG
        debug_log.parent.mkdir(parents=True, exist_ok=True)
        # The PIN comes from a pipe in a private directory that answers once:
        # with a wrong PIN tstclnt would otherwise try it again and again.
        with pin_once(job.pin, prefix="p11tls-nss-pin-") as pin_file:
            version = "tls" + job.tls.value
            argv = [
                shutil.which("tstclnt") or "tstclnt", "-h", job.host, "-p", str(job.port),
                "-d", f"sql:{database}", "-n", nickname, "-W", str(pin_file),
                "-V", f"{version}:{version}",
                "-Q",  # exit after the handshake: without it tstclnt spins on stdin EOF
            ]
            env = base_env({**job.env, "NSS_DEBUG_PKCS11_MODULE": MODULE_NAME,
                            "NSPR_LOG_MODULES": "nss_mod_log:4",
                            "NSPR_LOG_FILE": str(debug_log)})
            proc = run_logged(argv, env=env, log_path=job.log_path, timeout=job.timeout_s)
        _mask_file(debug_log, job.pin)
        return ClientResult.from_process(self.name, proc)

    def database(self, module: Path, ca_pem: Path) -> Path:
        """The NSS database for this module and CA, made on first use."""
        key = (str(module), str(ca_pem))
        with self._lock:
            if key not in self._databases:
                if self._root is None:
                    self._root = Path(tempfile.mkdtemp(prefix="p11tls-nss-"))
                directory = self._root / f"db{len(self._databases)}"
                directory.mkdir()
                make_database(directory, module, ca_pem)
                self._databases[key] = directory
            return self._databases[key]

    def close(self) -> None:
        with self._lock:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._databases.clear()


def make_database(directory: Path, module: Path, ca_pem: Path) -> None:
    """An empty-password NSS database trusting `ca_pem` for servers and
    listing `module` (not loaded here)."""
    db = f"sql:{directory}"
    _run(["certutil", "-N", "-d", db, "--empty-password"])
    _run(["certutil", "-A", "-d", db, "-n", "p11tls-ca", "-t", "C,,", "-i", str(ca_pem)])
    if '"' in str(module):
        raise HarnessError(f"module path {module} contains a double quote: NSS cannot list it")
    with open(directory / "pkcs11.txt", "a") as modules:
        modules.write(f'\nlibrary="{module}"\nname={MODULE_NAME}\n')


def _run(argv: list[str]) -> None:
    tool = shutil.which(argv[0]) or argv[0]
    try:
        proc = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarnessError(f"{argv[0]} failed: {exc}") from None
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv[:2])} failed: "
                           f"{(proc.stderr or proc.stdout).strip()[:300]}")


def _mask_file(path: Path, pin: str) -> None:
    """NSS logs the PIN's pointer and length, not its value; masked all the same."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    masked = pin_masking.mask_bytes(data, frozenset({pin}))
    if masked != data:
        path.write_bytes(masked)


def nss_version() -> str | None:
    """NSS's version: the package that installed tstclnt (same source as libnss3)."""
    return package_version(Path(found)) if (found := shutil.which("tstclnt")) else None
