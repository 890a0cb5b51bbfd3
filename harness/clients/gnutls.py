"""`gnutls-cli --provider MODULE`: GnuTLS with exactly one PKCS#11 module."""

from __future__ import annotations

import shutil

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.process import base_env, run_logged, tool_version
from harness.versions import command_version


class GnuTLSClient(Client):
    name = "gnutls"
    marker = "gnutls"

    def unavailable_reason(self) -> str | None:
        if shutil.which("gnutls-cli") is None:
            return "gnutls-cli not found: install gnutls-bin"
        return None

    def version(self) -> str:
        return tool_version(["gnutls-cli", "--version"])

    def components(self) -> dict[str, str | None]:
        return {"gnutls": command_version(["gnutls-cli", "--version"])}

    def handshake(self, job: HandshakeJob) -> ClientResult:
        cli = shutil.which("gnutls-cli") or "gnutls-cli"
        version = "+VERS-TLS" + job.tls.value
        argv = [
            cli, "--provider", str(job.module),
            "--x509certfile", str(job.cert_pem), "--x509keyfile", job.key_uri,
            "--x509cafile", str(job.ca_pem),
            "--priority", f"NORMAL:-VERS-ALL:{version}",
            "-p", str(job.port), job.host,
        ]
        # GNUTLS_PIN answers the PIN prompt without putting the PIN in argv.
        env = base_env({**job.env, "GNUTLS_PIN": job.pin})
        proc = run_logged(argv, env=env, log_path=job.log_path, timeout=job.timeout_s)
        return ClientResult.from_process(self.name, proc)
