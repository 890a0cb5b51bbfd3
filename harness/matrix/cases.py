"""The matrix: which handshake cases exist, their ids and markers."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from harness.matrix.keys import Algorithm, KeySpec, Provisioning
from harness.tls.version import TLSVersion

# The server restriction the matrix adds for RSA keys in TLS 1.2.
FORCED_RSA_PKCS1 = "rsa_pkcs1_sha256"
# The control client: the imported key from memory, no token. Generated keys
# have no host copy, so it gets imported keys only.
SOFTWARE = "software"
# Clients whose peer is a real server of their own (openvpn, hostapd's RADIUS
# server), which cannot be told to allow only rsa_pkcs1_sha256: no forced cases.
OWN_PEER = frozenset({"openvpn", "eap-tls"})


@dataclass(frozen=True)
class Case:
    """One handshake: client × key × provisioning × TLS version."""

    client: str
    key: KeySpec
    provisioning: Provisioning
    tls: TLSVersion
    client_sigalgs: str | None = None  # the server allows only these client schemes
    # Sweep mode when set: the server names only padding CAs of about this many
    # bytes in its CertificateRequest and sends no chain (padding.py).
    padding_bytes: int | None = None

    @property
    def case_id(self) -> str:
        parts = [self.client, self.key.name, self.provisioning.value, self.tls.marker]
        if self.client_sigalgs:
            parts.append(self.client_sigalgs)
        if self.padding_bytes is not None:
            parts.append(f"pad{self.padding_bytes}")
        return "-".join(parts)

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.tls.marker, self.key.algorithm.value, self.provisioning.value,
                # java@21 is one of the java clients: same marker
                self.client.split("@", 1)[0].replace("-", "_"))


# The provisionings that make keys; EXISTING is the read-only axis of its own.
MADE = (Provisioning.GENERATE, Provisioning.IMPORT)


def provisionings(client: str) -> tuple[Provisioning, ...]:
    """The provisionings a client runs with: both, but imported only for software."""
    return (Provisioning.IMPORT,) if client == SOFTWARE else MADE


def cases(clients: list[str], keys: tuple[KeySpec, ...], *,
          existing: bool = False) -> list[Case]:
    """Every client × key × provisioning × TLS version, then for RSA keys the
    TLS 1.2 cases with the server forcing rsa_pkcs1_sha256 (on the generated
    key; the software control, which has imported keys only, on the imported).

    `existing`: `keys` are keys already on the token (harness.token.existing_keys), each
    with the one provisioning EXISTING; the software control has no host copy
    of them and is left out."""
    if existing:
        clients = [c for c in clients if c != SOFTWARE]

    def rows(client: str) -> tuple[Provisioning, ...]:
        return (Provisioning.EXISTING,) if existing else provisionings(client)

    plain = [
        Case(client, key, prov, tls)
        for client in clients for key in keys
        for prov in rows(client) for tls in TLSVersion
    ]
    forced = [
        Case(client, key, rows(client)[0] if existing or client == SOFTWARE
             else Provisioning.GENERATE, TLSVersion.TLS12, FORCED_RSA_PKCS1)
        for client, key in itertools.product(clients, keys)
        if key.algorithm is Algorithm.RSA and client not in OWN_PEER
    ]
    return plain + forced
