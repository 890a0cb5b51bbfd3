"""TLS clients that authenticate with a key on a PKCS#11 token.

Each client module exposes one class implementing `harness.clients.base.Client`.
`CLIENTS` maps the client names used in test ids to those classes.
"""

from __future__ import annotations

from harness.clients.base import Client
from harness.clients.gnutls import GnuTLSClient
from harness.clients.java import JavaClient, JavaNoCombinedClient
from harness.clients.openssl_engine import OpenSSLEngineClient
from harness.clients.openssl_provider import OpenSSLProviderClient

CLIENTS: dict[str, type[Client]] = {
    c.name: c for c in (OpenSSLEngineClient, OpenSSLProviderClient, GnuTLSClient,
                        JavaClient, JavaNoCombinedClient)
}
