"""What a log or pasted text says about the case: which client, which key,
which TLS version — in the matrix's own names, so findings can cite the
harness's measured facts and the next command can select the same cases.

The first mention wins (an issue names its failing case in its title and
first lines, the working ones later); only the first lines are read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from harness.explain.model import Call

SAMPLE = 5000  # lines read for the context

# matrix client name -> what shows it in a text
CLIENTS = (
    ("java", re.compile(r"sun\.security\.pkcs11|SunPKCS11|javax\.net\.ssl|\bJDK\b|\bJava\b")),
    ("openssl-provider", re.compile(r"pkcs11-provider|PKCS11_PROVIDER|-provider pkcs11|"
                                    r"error:41[0-9A-F]{6}:")),
    ("curl", re.compile(r"\bcurl\b")),
    ("openssl-engine", re.compile(r"-engine pkcs11|engine \"pkcs11\"|libp11|PKCS11_\w+|"
                                  r"engine_pkcs11|ENGINE_\w+")),
    ("gnutls", re.compile(r"GnuTLS|gnutls|p11tool|certtool")),
    ("nss", re.compile(r"\bNSS\b|tstclnt|certutil|SEC_ERROR_|SSL_ERROR_|Firefox")),
)
# matrix key name -> what shows it
KEYS = (
    ("p256", re.compile(r"P-?256\b|prime256v1|secp256r1|EC:prime256v1", re.I)),
    ("p384", re.compile(r"P-?384\b|secp384r1", re.I)),
    ("p521", re.compile(r"P-?521\b|secp521r1", re.I)),
    ("ed25519", re.compile(r"Ed25519|CKK_EC_EDWARDS|CKM_EDDSA", re.I)),
    ("rsa3072", re.compile(r"RSA[- :]?3072|rsa:3072", re.I)),
    ("rsa2048", re.compile(r"RSA[- :]?2048|rsa:2048", re.I)),
)
KEY_MARKERS = {"p256": "ecdsa", "p384": "ecdsa", "p521": "ecdsa", "ed25519": "eddsa",
               "rsa2048": "rsa", "rsa3072": "rsa"}
TLS = re.compile(r"\bTLS ?v?1[._]([23])\b|\btls1([23])\b", re.I)


@dataclass(frozen=True)
class Context:
    client: str | None = None  # matrix client name (java, openssl-engine …)
    key: str | None = None  # matrix key name (p256, rsa2048 …)
    key_marker: str | None = None  # ecdsa, rsa, eddsa
    tls: str | None = None  # "1.2", "1.3"

    def markers(self) -> str | None:
        """The pytest -m expression that selects this case in the matrix."""
        parts = [p for p in (
            self.client.replace("-", "_") if self.client else None,
            self.key_marker, f"tls{self.tls.replace('.', '')}" if self.tls else None) if p]
        return " and ".join(parts) or None


def _first(text: str, table: Sequence[tuple[str, re.Pattern[str]]]) -> str | None:
    best: tuple[int, str] | None = None
    for name, pattern in table:
        found = pattern.search(text)
        if found and (best is None or found.start() < best[0]):
            best = (found.start(), name)
    return best[1] if best else None


def context_of(lines: Sequence[str], calls: Sequence[Call] = ()) -> Context:
    text = "\n".join(lines[:SAMPLE])
    client = _first(text, CLIENTS)
    key = _first(text, KEYS)
    marker = KEY_MARKERS.get(key or "")
    if marker is None:
        kinds = {c.key_type for c in calls if c.key_type}
        marker = ("ecdsa" if "CKK_EC" in kinds else "rsa" if "CKK_RSA" in kinds
                  else "eddsa" if "CKK_EC_EDWARDS" in kinds else None)
    found = TLS.search(text)
    tls = f"1.{found.group(1) or found.group(2)}" if found else None
    return Context(client, key, marker, tls)
