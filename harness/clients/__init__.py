"""TLS clients that authenticate with a key on a PKCS#11 token.

Each client module exposes one class implementing `harness.clients.base.Client`.
`CLIENTS` maps the client names used in test ids to those classes. The
`software` client is the control: the imported key used from memory, no token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.clients.base import Client
from harness.clients.gnutls import GnuTLSClient
from harness.clients.java import JavaClient, JavaNoCombinedClient
from harness.clients.openssl_engine import OpenSSLEngineClient
from harness.clients.openssl_provider import OpenSSLProviderClient
from harness.clients.software import SoftwareClient

if TYPE_CHECKING:
    from harness.config import Settings

CLIENTS: dict[str, type[Client]] = {
    c.name: c for c in (OpenSSLEngineClient, OpenSSLProviderClient, GnuTLSClient,
                        JavaClient, JavaNoCombinedClient, SoftwareClient)
}


def check_clients(settings: Settings) -> None:
    """Refuse, before anything runs, a client configuration that cannot work:
    bad --java-p11-config lines, and a client the user named (--p11-clients,
    --java) that is not installed. Unnamed missing clients are skipped later."""
    from harness.errors import ToolMissing

    for name in settings.clients:
        client = CLIENTS[name].from_settings(settings)  # raises ConfigError on bad options
        if settings.named_client(name):
            reason = client.unavailable_reason()
            if reason:
                raise ToolMissing(f"{name} was asked for but cannot run: {reason}")
