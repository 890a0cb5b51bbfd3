"""The PKCS#11 names and numbers: mechanisms, return codes, attributes, object
classes, key types, user types, MGFs, PIN flags and named curves.

Built from python-pkcs11's enums (`pkcs11.Mechanism`, `pkcs11.Attribute`,
`pkcs11.ObjectClass`, `pkcs11.KeyType`, `pkcs11.MGF`) where they have them,
completed from the OASIS PKCS#11 3.0 values where they do not (return codes,
user types, PIN flags, CKM_ECDSA_SHA3_*, ...). python-pkcs11 marks deprecated
members with a leading underscore (`_MD5`, `_DES_KEY_GEN`); they keep their
spec name here. The C interposer's name tables are generated from these
tables (harness/pkcs11/c_header.py), so a name can only be spelled one way.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pkcs11


@dataclass(frozen=True)
class Table:
    """One kind of constant: `names` value -> canonical name; `values` every
    accepted spelling (canonical names and aliases) -> value."""

    prefix: str
    names: Mapping[int, str]
    values: Mapping[str, int] = field(repr=False)

    def name(self, value: int) -> str | None:
        return self.names.get(value)

    def value(self, name: str) -> int | None:
        return self.values.get(name)

    def entries(self) -> list[tuple[int, str]]:
        """(value, name) in a stable order: canonical names first, then aliases."""
        canonical = sorted(self.names.items())
        aliases = sorted(
            (v, n) for n, v in self.values.items() if self.names.get(v) != n
        )
        return canonical + aliases


def _table(
    prefix: str,
    members: Iterable[tuple[str, int]],
    spec: Mapping[str, int] = {},  # noqa: B006 - read only
    aliases: Mapping[str, str] = {},  # noqa: B006 - read only
) -> Table:
    names: dict[int, str] = {}
    values: dict[str, int] = {}
    for name, value in [*members, *spec.items()]:
        values.setdefault(name, value)
        names.setdefault(value, name)
    for alias, target in aliases.items():
        values[alias] = values[target]
    return Table(prefix, names, values)


def _enum_members(prefix: str, cls: type[enum.Enum]) -> list[tuple[str, int]]:
    """(spec name, value) of an enum's members, canonical members first.

    A deprecated member `_X` becomes `prefix + X` unless `X` is a member of
    its own (python-pkcs11 keeps `_AES_KEY_WRAP` = 0x1090 of an old draft
    next to AES_KEY_WRAP = 0x2109).
    """
    members = cls.__members__
    out = []
    for raw, member in sorted(members.items(), key=lambda kv: kv[0].startswith("_")):
        name = raw.lstrip("_")
        if raw.startswith("_") and name in members:
            continue
        if name == "VENDOR_DEFINED":
            continue  # a range start, not a name a log ever prints
        out.append((prefix + name, int(member.value)))
    return out


# --- mechanisms -------------------------------------------------------------------
# PKCS#11 3.0 values python-pkcs11 0.10 has no member for.
SPEC_MECHANISMS = {
    "CKM_ECDSA_SHA3_224": 0x1047,
    "CKM_ECDSA_SHA3_256": 0x1048,
    "CKM_ECDSA_SHA3_384": 0x1049,
    "CKM_ECDSA_SHA3_512": 0x104A,
    "CKM_EC_MONTGOMERY_KEY_PAIR_GEN": 0x1056,
    "CKM_TLS12_KDF": 0x3D9,
    "CKM_TLS12_MASTER_KEY_DERIVE": 0x3E0,
    "CKM_TLS12_KEY_AND_MAC_DERIVE": 0x3E1,
    "CKM_TLS12_MASTER_KEY_DERIVE_DH": 0x3E2,
    "CKM_TLS_MAC": 0x3E4,
    "CKM_TLS_KDF": 0x3E5,
}
MECHANISM_ALIASES = {"CKM_ECDSA_KEY_PAIR_GEN": "CKM_EC_KEY_PAIR_GEN"}

# --- return codes (python-pkcs11 has exception classes, no enum) -------------------
SPEC_RETURN_CODES = {
    "CKR_OK": 0x000,
    "CKR_CANCEL": 0x001,
    "CKR_HOST_MEMORY": 0x002,
    "CKR_SLOT_ID_INVALID": 0x003,
    "CKR_GENERAL_ERROR": 0x005,
    "CKR_FUNCTION_FAILED": 0x006,
    "CKR_ARGUMENTS_BAD": 0x007,
    "CKR_NO_EVENT": 0x008,
    "CKR_NEED_TO_CREATE_THREADS": 0x009,
    "CKR_CANT_LOCK": 0x00A,
    "CKR_ATTRIBUTE_READ_ONLY": 0x010,
    "CKR_ATTRIBUTE_SENSITIVE": 0x011,
    "CKR_ATTRIBUTE_TYPE_INVALID": 0x012,
    "CKR_ATTRIBUTE_VALUE_INVALID": 0x013,
    "CKR_ACTION_PROHIBITED": 0x01B,
    "CKR_DATA_INVALID": 0x020,
    "CKR_DATA_LEN_RANGE": 0x021,
    "CKR_DEVICE_ERROR": 0x030,
    "CKR_DEVICE_MEMORY": 0x031,
    "CKR_DEVICE_REMOVED": 0x032,
    "CKR_ENCRYPTED_DATA_INVALID": 0x040,
    "CKR_ENCRYPTED_DATA_LEN_RANGE": 0x041,
    "CKR_FUNCTION_CANCELED": 0x050,
    "CKR_FUNCTION_NOT_PARALLEL": 0x051,
    "CKR_FUNCTION_NOT_SUPPORTED": 0x054,
    "CKR_KEY_HANDLE_INVALID": 0x060,
    "CKR_KEY_SIZE_RANGE": 0x062,
    "CKR_KEY_TYPE_INCONSISTENT": 0x063,
    "CKR_KEY_NOT_NEEDED": 0x064,
    "CKR_KEY_CHANGED": 0x065,
    "CKR_KEY_NEEDED": 0x066,
    "CKR_KEY_INDIGESTIBLE": 0x067,
    "CKR_KEY_FUNCTION_NOT_PERMITTED": 0x068,
    "CKR_KEY_NOT_WRAPPABLE": 0x069,
    "CKR_KEY_UNEXTRACTABLE": 0x06A,
    "CKR_MECHANISM_INVALID": 0x070,
    "CKR_MECHANISM_PARAM_INVALID": 0x071,
    "CKR_OBJECT_HANDLE_INVALID": 0x082,
    "CKR_OPERATION_ACTIVE": 0x090,
    "CKR_OPERATION_NOT_INITIALIZED": 0x091,
    "CKR_PIN_INCORRECT": 0x0A0,
    "CKR_PIN_INVALID": 0x0A1,
    "CKR_PIN_LEN_RANGE": 0x0A2,
    "CKR_PIN_EXPIRED": 0x0A3,
    "CKR_PIN_LOCKED": 0x0A4,
    "CKR_SESSION_CLOSED": 0x0B0,
    "CKR_SESSION_COUNT": 0x0B1,
    "CKR_SESSION_HANDLE_INVALID": 0x0B3,
    "CKR_SESSION_PARALLEL_NOT_SUPPORTED": 0x0B4,
    "CKR_SESSION_READ_ONLY": 0x0B5,
    "CKR_SESSION_EXISTS": 0x0B6,
    "CKR_SESSION_READ_ONLY_EXISTS": 0x0B7,
    "CKR_SESSION_READ_WRITE_SO_EXISTS": 0x0B8,
    "CKR_SIGNATURE_INVALID": 0x0C0,
    "CKR_SIGNATURE_LEN_RANGE": 0x0C1,
    "CKR_TEMPLATE_INCOMPLETE": 0x0D0,
    "CKR_TEMPLATE_INCONSISTENT": 0x0D1,
    "CKR_TOKEN_NOT_PRESENT": 0x0E0,
    "CKR_TOKEN_NOT_RECOGNIZED": 0x0E1,
    "CKR_TOKEN_WRITE_PROTECTED": 0x0E2,
    "CKR_UNWRAPPING_KEY_HANDLE_INVALID": 0x0F0,
    "CKR_UNWRAPPING_KEY_SIZE_RANGE": 0x0F1,
    "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT": 0x0F2,
    "CKR_USER_ALREADY_LOGGED_IN": 0x100,
    "CKR_USER_NOT_LOGGED_IN": 0x101,
    "CKR_USER_PIN_NOT_INITIALIZED": 0x102,
    "CKR_USER_TYPE_INVALID": 0x103,
    "CKR_USER_ANOTHER_ALREADY_LOGGED_IN": 0x104,
    "CKR_USER_TOO_MANY_TYPES": 0x105,
    "CKR_WRAPPED_KEY_INVALID": 0x110,
    "CKR_WRAPPED_KEY_LEN_RANGE": 0x112,
    "CKR_WRAPPING_KEY_HANDLE_INVALID": 0x113,
    "CKR_WRAPPING_KEY_SIZE_RANGE": 0x114,
    "CKR_WRAPPING_KEY_TYPE_INCONSISTENT": 0x115,
    "CKR_RANDOM_SEED_NOT_SUPPORTED": 0x120,
    "CKR_RANDOM_NO_RNG": 0x121,
    "CKR_DOMAIN_PARAMS_INVALID": 0x130,
    "CKR_CURVE_NOT_SUPPORTED": 0x140,
    "CKR_BUFFER_TOO_SMALL": 0x150,
    "CKR_SAVED_STATE_INVALID": 0x160,
    "CKR_INFORMATION_SENSITIVE": 0x170,
    "CKR_STATE_UNSAVEABLE": 0x180,
    "CKR_CRYPTOKI_NOT_INITIALIZED": 0x190,
    "CKR_CRYPTOKI_ALREADY_INITIALIZED": 0x191,
    "CKR_MUTEX_BAD": 0x1A0,
    "CKR_MUTEX_NOT_LOCKED": 0x1A1,
    "CKR_NEW_PIN_MODE": 0x1B0,
    "CKR_NEXT_OTP": 0x1B1,
    "CKR_EXCEEDED_MAX_ITERATIONS": 0x1C0,
    "CKR_FIPS_SELF_TEST_FAILED": 0x1C1,
    "CKR_LIBRARY_LOAD_FAILED": 0x1C2,
    "CKR_PIN_TOO_WEAK": 0x1C3,
    "CKR_PUBLIC_KEY_INVALID": 0x1C4,
    "CKR_FUNCTION_REJECTED": 0x200,
    "CKR_TOKEN_RESOURCE_EXCEEDED": 0x201,
    "CKR_OPERATION_CANCEL_FAILED": 0x202,
}

SPEC_ATTRIBUTES = {"CKA_PUBLIC_KEY_INFO": 0x129}
ATTRIBUTE_ALIASES = {"CKA_ECDSA_PARAMS": "CKA_EC_PARAMS"}
SPEC_KEY_TYPES = {"CKK_EC_MONTGOMERY": 0x41}
KEY_TYPE_ALIASES = {"CKK_ECDSA": "CKK_EC"}
SPEC_USER_TYPES = {"CKU_SO": 0, "CKU_USER": 1, "CKU_CONTEXT_SPECIFIC": 2}
SPEC_SOURCES = {"CKZ_DATA_SPECIFIED": 1}
# CK_TOKEN_INFO flags about the user PIN's retry counter
SPEC_PIN_FLAGS = {
    "CKF_USER_PIN_COUNT_LOW": 0x10000,
    "CKF_USER_PIN_FINAL_TRY": 0x20000,
    "CKF_USER_PIN_LOCKED": 0x40000,
}

MECHANISMS = _table(
    "CKM_", _enum_members("CKM_", pkcs11.Mechanism), SPEC_MECHANISMS, MECHANISM_ALIASES
)
RETURN_CODES = _table("CKR_", (), SPEC_RETURN_CODES)
ATTRIBUTES = _table(
    "CKA_", _enum_members("CKA_", pkcs11.Attribute), SPEC_ATTRIBUTES, ATTRIBUTE_ALIASES
)
OBJECT_CLASSES = _table("CKO_", _enum_members("CKO_", pkcs11.ObjectClass))
KEY_TYPES = _table(
    "CKK_", _enum_members("CKK_", pkcs11.KeyType), SPEC_KEY_TYPES, KEY_TYPE_ALIASES
)
MGFS = _table("CKG_", [("CKG_MGF1_" + n, int(m.value)) for n, m in pkcs11.MGF.__members__.items()])
USER_TYPES = _table("CKU_", (), SPEC_USER_TYPES)
SOURCES = _table("CKZ_", (), SPEC_SOURCES)
PIN_FLAGS = _table("CKF_", (), SPEC_PIN_FLAGS)

TABLES: dict[str, Table] = {
    "mechanism": MECHANISMS,
    "return_code": RETURN_CODES,
    "attribute": ATTRIBUTES,
    "object_class": OBJECT_CLASSES,
    "key_type": KEY_TYPES,
    "mgf": MGFS,
    "user_type": USER_TYPES,
    "source": SOURCES,
    "pin_flag": PIN_FLAGS,
}

# --- named curves (CKA_EC_PARAMS) ---------------------------------------------------
# DER-encoded named-curve OID -> (curve name, field size in bytes)
CURVES: dict[bytes, tuple[str, int]] = {
    bytes.fromhex("06082a8648ce3d030107"): ("P-256", 32),
    bytes.fromhex("06052b81040021"): ("P-224", 28),
    bytes.fromhex("06052b81040022"): ("P-384", 48),
    bytes.fromhex("06052b81040023"): ("P-521", 66),
    bytes.fromhex("06052b8104000a"): ("secp256k1", 32),
    bytes.fromhex("06092b2403030208010107"): ("brainpoolP256r1", 32),
    bytes.fromhex("06092b240303020801010b"): ("brainpoolP384r1", 48),
    bytes.fromhex("06092b240303020801010d"): ("brainpoolP512r1", 64),
    bytes.fromhex("06032b6570"): ("Ed25519", 32),
    bytes.fromhex("06032b6571"): ("Ed448", 57),
}
CURVE_ALIASES = {
    "prime256v1": "P-256",
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
    "secp224r1": "P-224",
    "p-256": "P-256",
    "p-384": "P-384",
    "p-521": "P-521",
    "p256": "P-256",
    "p384": "P-384",
    "p521": "P-521",
}
CURVE_SIZES = {name: size for name, size in CURVES.values()}
