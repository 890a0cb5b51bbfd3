"""TLS clients that authenticate with a key on a PKCS#11 token.

Each client module exposes one class implementing `harness.clients.base.Client`
(or a declarative `CommandClient` entry, command.py). `CLIENTS` maps the client
names used in test ids to those classes; `client_names` adds one `java@N` and
`java-nocombined@N` pair per installed JDK besides the default one, and
`make_client` builds any of them from the user's `ClientOptions`. The
`software` client is the control: the imported key used from memory, no token.

Nothing here imports the settings (harness.run.config): clients get ClientOptions
when built and a HandshakeJob per handshake.
"""

from __future__ import annotations

from typing import Protocol

from harness.clients.base import Client, ClientOptions
from harness.clients.curl import CurlClient
from harness.clients.eap_tls import EAPTLSClient
from harness.clients.gnutls import GnuTLSClient
from harness.clients.go import GoClient
from harness.clients.java import JavaClient, JavaNoCombinedClient, jdk_variants
from harness.clients.nss import NSSClient
from harness.clients.openssl_engine import OpenSSLEngineClient
from harness.clients.openssl_provider import OpenSSLProviderClient
from harness.clients.openvpn import OpenVPNClient
from harness.clients.python_ssl import PythonSSLClient
from harness.clients.software import SoftwareClient
from harness.errors import ConfigError, ToolMissing

CLIENTS: dict[str, type[Client]] = {
    c.name: c for c in (OpenSSLEngineClient, OpenSSLProviderClient, GnuTLSClient, NSSClient,
                        CurlClient, JavaClient, JavaNoCombinedClient, GoClient,
                        OpenVPNClient, PythonSSLClient, EAPTLSClient, SoftwareClient)
}
JAVA_CLIENTS: dict[str, type[JavaClient]] = {c.name: c for c in (JavaClient,
                                                                  JavaNoCombinedClient)}


def client_names(java_homes: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every client name: CLIENTS, and after the Java clients one pair per
    further JDK (java@21, java-nocombined@21)."""
    try:
        suffixes = tuple(jdk_variants(java_homes))
    except ToolMissing as exc:  # a --java the user named is not a usable JDK
        raise ConfigError(f"--java: {exc}") from None
    names: list[str] = []
    for name in CLIENTS:
        names.append(name)
        if name in JAVA_CLIENTS:
            names.extend(f"{name}@{suffix}" for suffix in suffixes)
    return tuple(names)


def make_client(name: str, options: ClientOptions | None = None) -> Client:
    """The client called `name`, as the user configured it."""
    options = options or ClientOptions()
    base, _, suffix = name.partition("@")
    if base not in CLIENTS or (suffix and base not in JAVA_CLIENTS):
        raise ConfigError(f"unknown client {name!r}: choose from "
                          f"{', '.join(client_names(options.java_homes))}")
    if not suffix:
        return CLIENTS[base].from_options(options)
    jdk = jdk_variants(options.java_homes).get(suffix)
    if jdk is None:
        raise ConfigError(f"unknown client {name!r}: no further JDK {suffix} here; choose "
                          f"from {', '.join(client_names(options.java_homes))}")
    return JAVA_CLIENTS[base](java_home=jdk.home, extra_config=options.java_p11_config,
                              jdk_suffix=suffix, read_only=options.read_only)


class ClientSettings(Protocol):
    """What check_clients needs of the settings (harness.run.config.Settings)."""

    @property
    def clients(self) -> tuple[str, ...]: ...

    def named_client(self, client: str) -> bool: ...

    def client_options(self) -> ClientOptions: ...


def check_clients(settings: ClientSettings) -> None:
    """Refuse, before anything runs, a client configuration that cannot work:
    bad --java-p11-config lines, and a client the user named (--p11-clients,
    --java) that is not installed. Unnamed missing clients are skipped later."""
    for name in settings.clients:
        client = make_client(name, settings.client_options())  # ConfigError on bad options
        if settings.named_client(name):
            reason = client.unavailable_reason()
            if reason:
                raise ToolMissing(f"{name} was asked for but cannot run: {reason}")
