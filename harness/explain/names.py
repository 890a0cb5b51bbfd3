"""PKCS#11 and PC/SC constants that call logs print by name or by number.

Logs disagree on spelling: pkcs11-spy prints `0x00001044` for mechanisms its
table lacks, p11-kit prints `CKM_0x00001044` and the old aliases
(`CKM_ECDSA_KEY_PAIR_GEN`, `CKA_ECDSA_PARAMS`), OpenSC prints `0x1044`.
Everything is normalised to the PKCS#11 3.0 name here so rules compare names.
"""

from __future__ import annotations

import re

MECHANISMS: dict[int, str] = {
    0x0000: "CKM_RSA_PKCS_KEY_PAIR_GEN",
    0x0001: "CKM_RSA_PKCS",
    0x0002: "CKM_RSA_9796",
    0x0003: "CKM_RSA_X_509",
    0x0004: "CKM_MD2_RSA_PKCS",
    0x0005: "CKM_MD5_RSA_PKCS",
    0x0006: "CKM_SHA1_RSA_PKCS",
    0x0009: "CKM_RSA_PKCS_OAEP",
    0x000D: "CKM_RSA_PKCS_PSS",
    0x000E: "CKM_SHA1_RSA_PKCS_PSS",
    0x0010: "CKM_DSA_KEY_PAIR_GEN",
    0x0011: "CKM_DSA",
    0x0012: "CKM_DSA_SHA1",
    0x0013: "CKM_DSA_SHA224",
    0x0014: "CKM_DSA_SHA256",
    0x0015: "CKM_DSA_SHA384",
    0x0016: "CKM_DSA_SHA512",
    0x0020: "CKM_DH_PKCS_KEY_PAIR_GEN",
    0x0021: "CKM_DH_PKCS_DERIVE",
    0x0040: "CKM_SHA256_RSA_PKCS",
    0x0041: "CKM_SHA384_RSA_PKCS",
    0x0042: "CKM_SHA512_RSA_PKCS",
    0x0043: "CKM_SHA256_RSA_PKCS_PSS",
    0x0044: "CKM_SHA384_RSA_PKCS_PSS",
    0x0045: "CKM_SHA512_RSA_PKCS_PSS",
    0x0046: "CKM_SHA224_RSA_PKCS",
    0x0047: "CKM_SHA224_RSA_PKCS_PSS",
    0x0060: "CKM_SHA3_256_RSA_PKCS",
    0x0061: "CKM_SHA3_384_RSA_PKCS",
    0x0062: "CKM_SHA3_512_RSA_PKCS",
    0x0063: "CKM_SHA3_256_RSA_PKCS_PSS",
    0x0064: "CKM_SHA3_384_RSA_PKCS_PSS",
    0x0065: "CKM_SHA3_512_RSA_PKCS_PSS",
    0x0066: "CKM_SHA3_224_RSA_PKCS",
    0x0067: "CKM_SHA3_224_RSA_PKCS_PSS",
    0x0120: "CKM_DES_KEY_GEN",
    0x0131: "CKM_DES3_KEY_GEN",
    0x0132: "CKM_DES3_ECB",
    0x0133: "CKM_DES3_CBC",
    0x0136: "CKM_DES3_CBC_PAD",
    0x0210: "CKM_MD5",
    0x0220: "CKM_SHA_1",
    0x0221: "CKM_SHA_1_HMAC",
    0x0250: "CKM_SHA256",
    0x0251: "CKM_SHA256_HMAC",
    0x0255: "CKM_SHA224",
    0x0256: "CKM_SHA224_HMAC",
    0x0260: "CKM_SHA384",
    0x0261: "CKM_SHA384_HMAC",
    0x0270: "CKM_SHA512",
    0x0271: "CKM_SHA512_HMAC",
    0x02B0: "CKM_SHA3_256",
    0x02B5: "CKM_SHA3_224",
    0x02C0: "CKM_SHA3_384",
    0x02D0: "CKM_SHA3_512",
    0x0350: "CKM_GENERIC_SECRET_KEY_GEN",
    0x1040: "CKM_EC_KEY_PAIR_GEN",
    0x1041: "CKM_ECDSA",
    0x1042: "CKM_ECDSA_SHA1",
    0x1043: "CKM_ECDSA_SHA224",
    0x1044: "CKM_ECDSA_SHA256",
    0x1045: "CKM_ECDSA_SHA384",
    0x1046: "CKM_ECDSA_SHA512",
    0x1047: "CKM_ECDSA_SHA3_224",
    0x1048: "CKM_ECDSA_SHA3_256",
    0x1049: "CKM_ECDSA_SHA3_384",
    0x104A: "CKM_ECDSA_SHA3_512",
    0x1050: "CKM_ECDH1_DERIVE",
    0x1051: "CKM_ECDH1_COFACTOR_DERIVE",
    0x1055: "CKM_EC_EDWARDS_KEY_PAIR_GEN",
    0x1056: "CKM_EC_MONTGOMERY_KEY_PAIR_GEN",
    0x1057: "CKM_EDDSA",
    0x1080: "CKM_AES_KEY_GEN",
    0x1081: "CKM_AES_ECB",
    0x1082: "CKM_AES_CBC",
    0x1083: "CKM_AES_MAC",
    0x1085: "CKM_AES_CBC_PAD",
    0x1086: "CKM_AES_CTR",
    0x1087: "CKM_AES_GCM",
    0x1088: "CKM_AES_CCM",
    0x108A: "CKM_AES_CMAC",
    0x2109: "CKM_AES_KEY_WRAP",
    0x210A: "CKM_AES_KEY_WRAP_PAD",
}
MECHANISM_VALUES: dict[str, int] = {name: value for value, name in MECHANISMS.items()}
MECHANISM_ALIASES = {
    "CKM_ECDSA_KEY_PAIR_GEN": "CKM_EC_KEY_PAIR_GEN",
    "CKM_RSA_PKCS_KEY_PAIR_GEN": "CKM_RSA_PKCS_KEY_PAIR_GEN",
}

RETURN_CODES: dict[int, str] = {
    0x000: "CKR_OK",
    0x001: "CKR_CANCEL",
    0x002: "CKR_HOST_MEMORY",
    0x003: "CKR_SLOT_ID_INVALID",
    0x005: "CKR_GENERAL_ERROR",
    0x006: "CKR_FUNCTION_FAILED",
    0x007: "CKR_ARGUMENTS_BAD",
    0x008: "CKR_NO_EVENT",
    0x009: "CKR_NEED_TO_CREATE_THREADS",
    0x00A: "CKR_CANT_LOCK",
    0x010: "CKR_ATTRIBUTE_READ_ONLY",
    0x011: "CKR_ATTRIBUTE_SENSITIVE",
    0x012: "CKR_ATTRIBUTE_TYPE_INVALID",
    0x013: "CKR_ATTRIBUTE_VALUE_INVALID",
    0x01B: "CKR_ACTION_PROHIBITED",
    0x020: "CKR_DATA_INVALID",
    0x021: "CKR_DATA_LEN_RANGE",
    0x030: "CKR_DEVICE_ERROR",
    0x031: "CKR_DEVICE_MEMORY",
    0x032: "CKR_DEVICE_REMOVED",
    0x040: "CKR_ENCRYPTED_DATA_INVALID",
    0x041: "CKR_ENCRYPTED_DATA_LEN_RANGE",
    0x050: "CKR_FUNCTION_CANCELED",
    0x051: "CKR_FUNCTION_NOT_PARALLEL",
    0x054: "CKR_FUNCTION_NOT_SUPPORTED",
    0x060: "CKR_KEY_HANDLE_INVALID",
    0x062: "CKR_KEY_SIZE_RANGE",
    0x063: "CKR_KEY_TYPE_INCONSISTENT",
    0x064: "CKR_KEY_NOT_NEEDED",
    0x065: "CKR_KEY_CHANGED",
    0x066: "CKR_KEY_NEEDED",
    0x067: "CKR_KEY_INDIGESTIBLE",
    0x068: "CKR_KEY_FUNCTION_NOT_PERMITTED",
    0x069: "CKR_KEY_NOT_WRAPPABLE",
    0x06A: "CKR_KEY_UNEXTRACTABLE",
    0x070: "CKR_MECHANISM_INVALID",
    0x071: "CKR_MECHANISM_PARAM_INVALID",
    0x082: "CKR_OBJECT_HANDLE_INVALID",
    0x090: "CKR_OPERATION_ACTIVE",
    0x091: "CKR_OPERATION_NOT_INITIALIZED",
    0x0A0: "CKR_PIN_INCORRECT",
    0x0A1: "CKR_PIN_INVALID",
    0x0A2: "CKR_PIN_LEN_RANGE",
    0x0A3: "CKR_PIN_EXPIRED",
    0x0A4: "CKR_PIN_LOCKED",
    0x0B0: "CKR_SESSION_CLOSED",
    0x0B1: "CKR_SESSION_COUNT",
    0x0B3: "CKR_SESSION_HANDLE_INVALID",
    0x0B4: "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
    0x0B5: "CKR_SESSION_READ_ONLY",
    0x0B6: "CKR_SESSION_EXISTS",
    0x0B7: "CKR_SESSION_READ_ONLY_EXISTS",
    0x0B8: "CKR_SESSION_READ_WRITE_SO_EXISTS",
    0x0C0: "CKR_SIGNATURE_INVALID",
    0x0C1: "CKR_SIGNATURE_LEN_RANGE",
    0x0D0: "CKR_TEMPLATE_INCOMPLETE",
    0x0D1: "CKR_TEMPLATE_INCONSISTENT",
    0x0E0: "CKR_TOKEN_NOT_PRESENT",
    0x0E1: "CKR_TOKEN_NOT_RECOGNIZED",
    0x0E2: "CKR_TOKEN_WRITE_PROTECTED",
    0x0F0: "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
    0x0F1: "CKR_UNWRAPPING_KEY_SIZE_RANGE",
    0x0F2: "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
    0x100: "CKR_USER_ALREADY_LOGGED_IN",
    0x101: "CKR_USER_NOT_LOGGED_IN",
    0x102: "CKR_USER_PIN_NOT_INITIALIZED",
    0x103: "CKR_USER_TYPE_INVALID",
    0x104: "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    0x105: "CKR_USER_TOO_MANY_TYPES",
    0x110: "CKR_WRAPPED_KEY_INVALID",
    0x112: "CKR_WRAPPED_KEY_LEN_RANGE",
    0x113: "CKR_WRAPPING_KEY_HANDLE_INVALID",
    0x114: "CKR_WRAPPING_KEY_SIZE_RANGE",
    0x115: "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
    0x120: "CKR_RANDOM_SEED_NOT_SUPPORTED",
    0x121: "CKR_RANDOM_NO_RNG",
    0x130: "CKR_DOMAIN_PARAMS_INVALID",
    0x140: "CKR_CURVE_NOT_SUPPORTED",
    0x150: "CKR_BUFFER_TOO_SMALL",
    0x160: "CKR_SAVED_STATE_INVALID",
    0x170: "CKR_INFORMATION_SENSITIVE",
    0x180: "CKR_STATE_UNSAVEABLE",
    0x190: "CKR_CRYPTOKI_NOT_INITIALIZED",
    0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
    0x1A0: "CKR_MUTEX_BAD",
    0x1A1: "CKR_MUTEX_NOT_LOCKED",
    0x1B0: "CKR_NEW_PIN_MODE",
    0x1B1: "CKR_NEXT_OTP",
    0x1B5: "CKR_EXCEEDED_MAX_ITERATIONS",
    0x1B6: "CKR_FIPS_SELF_TEST_FAILED",
    0x1B7: "CKR_LIBRARY_LOAD_FAILED",
    0x1B8: "CKR_PIN_TOO_WEAK",
    0x1B9: "CKR_PUBLIC_KEY_INVALID",
    0x200: "CKR_FUNCTION_REJECTED",
}
RETURN_CODE_VALUES: dict[str, int] = {name: value for value, name in RETURN_CODES.items()}

OBJECT_CLASSES = {
    0: "CKO_DATA",
    1: "CKO_CERTIFICATE",
    2: "CKO_PUBLIC_KEY",
    3: "CKO_PRIVATE_KEY",
    4: "CKO_SECRET_KEY",
}
KEY_TYPES = {
    0x00: "CKK_RSA",
    0x01: "CKK_DSA",
    0x02: "CKK_DH",
    0x03: "CKK_EC",
    0x10: "CKK_GENERIC_SECRET",
    0x15: "CKK_DES3",
    0x1F: "CKK_AES",
    0x40: "CKK_EC_EDWARDS",
    0x41: "CKK_EC_MONTGOMERY",
}
USER_TYPES = {0: "CKU_SO", 1: "CKU_USER", 2: "CKU_CONTEXT_SPECIFIC"}

ATTRIBUTES = {
    0x000: "CKA_CLASS",
    0x001: "CKA_TOKEN",
    0x002: "CKA_PRIVATE",
    0x003: "CKA_LABEL",
    0x011: "CKA_VALUE",
    0x100: "CKA_KEY_TYPE",
    0x102: "CKA_ID",
    0x103: "CKA_SENSITIVE",
    0x108: "CKA_SIGN",
    0x120: "CKA_MODULUS",
    0x121: "CKA_MODULUS_BITS",
    0x122: "CKA_PUBLIC_EXPONENT",
    0x123: "CKA_PRIVATE_EXPONENT",
    0x124: "CKA_PRIME_1",
    0x125: "CKA_PRIME_2",
    0x126: "CKA_EXPONENT_1",
    0x127: "CKA_EXPONENT_2",
    0x128: "CKA_COEFFICIENT",
    0x162: "CKA_EXTRACTABLE",
    0x180: "CKA_EC_PARAMS",
    0x181: "CKA_EC_POINT",
}
ATTRIBUTE_ALIASES = {"CKA_ECDSA_PARAMS": "CKA_EC_PARAMS"}

# Attribute values that are key material: never echoed.
SECRET_ATTRIBUTES = frozenset(
    {
        "CKA_VALUE",
        "CKA_PRIVATE_EXPONENT",
        "CKA_PRIME_1",
        "CKA_PRIME_2",
        "CKA_EXPONENT_1",
        "CKA_EXPONENT_2",
        "CKA_COEFFICIENT",
    }
)
# Attributes whose presence in a template means "this is a private key".
PRIVATE_KEY_MATERIAL = frozenset(SECRET_ATTRIBUTES - {"CKA_VALUE"})

# DER-encoded named-curve OIDs (CKA_EC_PARAMS) -> (curve name, field size in bytes)
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
CURVE_SIZES = {name: size for name, size in CURVES.values()}
# Logs that hide values (p11-kit prints NOT-PRINTED) still show CKA_EC_POINT's
# length: DER OCTET STRING of an uncompressed point, or the bare point.
POINT_LENGTHS = {
    67: "256-bit curve",
    65: "256-bit curve",
    99: "384-bit curve",
    97: "384-bit curve",
    136: "521-bit curve",
    133: "521-bit curve",
}
CURVE_SIZES.update({"256-bit curve": 32, "384-bit curve": 48, "521-bit curve": 66})
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
LARGEST_ECDSA_INPUT = 66  # P-521: no raw-ECDSA input longer than this can be a digest

# PC/SC return codes seen in OpenSC's reader errors.
SCARD_ERRORS = {
    0x80100002: "SCARD_E_CANCELLED",
    0x80100005: "SCARD_E_INVALID_TARGET",
    0x80100008: "SCARD_E_INSUFFICIENT_BUFFER",
    0x8010000A: "SCARD_E_TIMEOUT",
    0x8010000C: "SCARD_E_NO_SMARTCARD",
    0x8010000F: "SCARD_E_PROTO_MISMATCH",
    0x80100016: "SCARD_E_NOT_TRANSACTED",
    0x80100017: "SCARD_E_READER_UNAVAILABLE",
    0x8010001D: "SCARD_E_NO_SERVICE",
    0x8010002E: "SCARD_E_NO_READERS_AVAILABLE",
    0x80100066: "SCARD_W_UNRESPONSIVE_CARD",
    0x80100067: "SCARD_W_UNPOWERED_CARD",
    0x80100068: "SCARD_W_RESET_CARD",
    0x80100069: "SCARD_W_REMOVED_CARD",
}

_HEX_MECHANISM = re.compile(r"(?:CKM_)?0x([0-9a-fA-F]+)")


def _number(text: str) -> int | None:
    """`160`, `0xa0`, `0x000000A0` -> int; anything else None (no int(x, 0) pitfalls)."""
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    return None


def mechanism_name(raw: str | int | None) -> str | None:
    """`CKM_ECDSA`, `0x00001044`, `CKM_0x00001044`, `4164`, 4164 -> a CKM_ name."""
    if raw is None:
        return None
    if isinstance(raw, int):
        return MECHANISMS.get(raw, f"{raw:#010x}")
    text = raw.strip()
    if not text:
        return None
    unknown = re.fullmatch(r"Unknown Mechanism \(([0-9a-fA-F]+)\)", text)
    if unknown:
        return mechanism_name(int(unknown.group(1), 16))
    if text.isdigit():
        return mechanism_name(int(text))
    match = _HEX_MECHANISM.fullmatch(text)
    if match:
        return mechanism_name(int(match.group(1), 16))
    return MECHANISM_ALIASES.get(text, text)



def return_code_name(raw: str | int | None) -> str | None:
    """`CKR_OK`, `0`, `0xa0`, 160 -> a CKR_ name (unknown codes keep their hex)."""
    if raw is None:
        return None
    if isinstance(raw, int):
        return RETURN_CODES.get(raw, f"CKR_VENDOR_{raw:#x}" if raw >= 0x80000000 else f"{raw:#x}")
    text = raw.strip()
    if text.startswith("CKR_"):
        return text
    number = _number(text)
    return return_code_name(number) if number is not None else text or None


def attribute_name(raw: str | int) -> str:
    if isinstance(raw, int):
        return ATTRIBUTES.get(raw, f"{raw:#x}")
    text = raw.strip()
    if text.isdigit():
        return ATTRIBUTES.get(int(text), text)
    return ATTRIBUTE_ALIASES.get(text, text)


def object_class_name(raw: str | int | None) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, int):
        return OBJECT_CLASSES.get(raw, f"{raw:#x}")
    text = raw.strip()
    number = _number(text)
    return object_class_name(number) if number is not None else text or None


def key_type_name(raw: str | int | None) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, int):
        return KEY_TYPES.get(raw, f"{raw:#x}")
    text = raw.strip()
    number = _number(text)
    return key_type_name(number) if number is not None else text or None


def curve_from_params(der: bytes) -> str | None:
    """Curve name from CKA_EC_PARAMS (a named-curve OID or a printable name)."""
    if der in CURVES:
        return CURVES[der][0]
    if len(der) > 2 and der[0] == 0x13:  # PrintableString, e.g. "prime256v1"
        return curve_name(der[2:].decode("ascii", "replace"))
    return None


def curve_from_point_length(length: int) -> str | None:
    return POINT_LENGTHS.get(length)


def curve_name(raw: str | None) -> str | None:
    if not raw:
        return None
    return CURVE_ALIASES.get(raw.strip().lower(), raw.strip())


def curve_size(curve: str | None) -> int | None:
    """Field size in bytes: the longest input raw ECDSA takes without truncating."""
    return CURVE_SIZES.get(curve) if curve else None


def scard_error_name(code: int) -> str | None:
    return SCARD_ERRORS.get(code)
