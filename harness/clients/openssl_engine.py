"""`openssl s_client` with the libp11 PKCS#11 engine."""

from __future__ import annotations

import shutil

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.installed import LIBP11_ENGINE, find_library
from harness.process import base_env, run_logged, tool_version
from harness.versions import command_version, package_version


class OpenSSLEngineClient(Client):
    name = "openssl-engine"
    marker = "openssl_engine"

    def unavailable_reason(self) -> str | None:
        if shutil.which("openssl") is None:
            return "openssl not found: install openssl"
        if find_library(*LIBP11_ENGINE) is None:
            return "libp11 engine (engines-3/pkcs11.so) not found: install libengine-pkcs11-openssl"
        return None

    def version(self) -> str:
        return f"{tool_version(['openssl', 'version'])}, libp11 engine"

    def components(self) -> dict[str, str | None]:
        return {"openssl": command_version(["openssl", "version"]),
                "libp11": package_version(find_library(*LIBP11_ENGINE))}

    def handshake(self, job: HandshakeJob) -> ClientResult:
        openssl = shutil.which("openssl") or "openssl"
        argv = [
            openssl, "s_client", "-connect", f"{job.host}:{job.port}",
            "-engine", "pkcs11", "-keyform", "engine", "-key", job.key_uri,
            # The PIN goes through the environment, never argv or a log.
            "-pass", "env:P11TLS_PIN",
            "-cert", str(job.cert_pem), "-CAfile", str(job.ca_pem),
            "-verify_return_error", job.tls.openssl_flag,
        ]
        # PKCS11_MODULE_PATH makes libp11 load exactly this module, not p11-kit-proxy.
        env = base_env({**job.env, "PKCS11_MODULE_PATH": str(job.module), "P11TLS_PIN": job.pin})
        proc = run_logged(argv, env=env, log_path=job.log_path, timeout=job.timeout_s)
        # libp11 segfaults at exit after any engine failure, so the exit code
        # alone says little; the server's view decides the outcome.
        return ClientResult.from_process(self.name, proc)
