"""`openssl s_client` with pkcs11-provider (OpenSSL 3 provider; Debian 13+)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.installed import PKCS11_PROVIDER, find_library
from harness.process import base_env, run_logged, tool_version
from harness.versions import command_version, package_version

CONFIG = """\
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = {provider}
pkcs11-module-path = {module}
pkcs11-module-token-pin = file:{pin_file}
activate = 1
"""


# short: pytest's skip summary line (SKIPPED [N] file:line: reason) fits 100 columns
PROVIDER_MISSING = "no pkcs11-provider: apt install pkcs11-provider (Debian 13+)"


def find_provider() -> Path | None:
    return find_library(*PKCS11_PROVIDER)


class OpenSSLProviderClient(Client):
    name = "openssl-provider"
    marker = "openssl_provider"

    def unavailable_reason(self) -> str | None:
        if shutil.which("openssl") is None:
            return "openssl not found: install openssl"
        if find_provider() is None:
            return PROVIDER_MISSING
        return None

    def version(self) -> str:
        return f"{tool_version(['openssl', 'version'])}, pkcs11-provider"

    def components(self) -> dict[str, str | None]:
        return {"openssl": command_version(["openssl", "version"]),
                "pkcs11-provider": package_version(find_provider())}

    def handshake(self, job: HandshakeJob) -> ClientResult:
        openssl = shutil.which("openssl") or "openssl"
        # The PIN file and config live in a private directory outside reports/.
        with tempfile.TemporaryDirectory(prefix="p11tls-provider-") as private:
            pin_file = Path(private) / "pin"
            pin_file.write_text(job.pin)
            pin_file.chmod(0o600)
            conf = Path(private) / "openssl.cnf"
            conf.write_text(CONFIG.format(provider=find_provider(), module=job.module,
                                          pin_file=pin_file))
            argv = [
                openssl, "s_client", "-connect", f"{job.host}:{job.port}",
                "-key", job.key_uri, "-cert", str(job.cert_pem), "-CAfile", str(job.ca_pem),
                "-verify_return_error", job.tls.openssl_flag,
            ]
            env = base_env({**job.env, "OPENSSL_CONF": str(conf)})
            proc = run_logged(argv, env=env, log_path=job.log_path, timeout=job.timeout_s)
        return ClientResult.from_process(self.name, proc)
