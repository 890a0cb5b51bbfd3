"""The key types the harness provisions, and how each is described."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from harness.errors import ConfigError


class Algorithm(enum.Enum):
    RSA = "rsa"
    ECDSA = "ecdsa"
    EDDSA = "eddsa"


class Provisioning(enum.Enum):
    GENERATE = "generate"  # C_GenerateKeyPair on the token
    IMPORT = "import"  # made on the host, stored with C_CreateObject
    EXISTING = "existing"  # already on the token: used read-only, nothing written


@dataclass(frozen=True)
class KeySpec:
    name: str
    algorithm: Algorithm
    bits: int  # RSA modulus bits or curve size
    curve: str | None = None  # cryptography's curve name for EC keys
    # DER of the curve OID (CKA_EC_PARAMS) for EC and EdDSA keys
    ec_params_hex: str | None = None


KEYS: dict[str, KeySpec] = {
    k.name: k
    for k in (
        KeySpec("rsa2048", Algorithm.RSA, 2048),
        KeySpec("rsa3072", Algorithm.RSA, 3072),
        KeySpec("p256", Algorithm.ECDSA, 256, "secp256r1", "06082a8648ce3d030107"),
        KeySpec("p384", Algorithm.ECDSA, 384, "secp384r1", "06052b81040022"),
        KeySpec("p521", Algorithm.ECDSA, 521, "secp521r1", "06052b81040023"),
        # RFC 8410 id-Ed25519 OID, as SoftHSM 2.6 expects it
        KeySpec("ed25519", Algorithm.EDDSA, 255, None, "06032b6570"),
    )
}


def key_spec(name: str) -> KeySpec:
    """Look a key type up by name; a clear error lists the known ones."""
    try:
        return KEYS[name]
    except KeyError:
        raise ConfigError(
            f"unknown key type {name!r}: choose one of {', '.join(KEYS)}"
        ) from None


def parse_keys(text: str) -> tuple[KeySpec, ...]:
    """`--p11-keys`: comma-separated key names, or `all`."""
    if text.strip() == "all":
        return tuple(KEYS.values())
    keys = tuple(key_spec(name.strip()) for name in text.split(",") if name.strip())
    if not keys:
        raise ConfigError(f"--p11-keys is empty: name some of {', '.join(KEYS)} or 'all'")
    return keys
