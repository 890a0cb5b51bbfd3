"""The PKCS#11 names explain's parsers and rules use, from the harness's one
vocabulary (harness.pkcs11), plus what only logs need: PC/SC error codes,
curves told by a point's length, and which attributes are key material.
"""

from __future__ import annotations

from harness.interposer.profile import PKCS11_FUNCTIONS
from harness.pkcs11 import (
    attribute_name,
    curve_from_params,
    curve_name,
    exception_class_code,
    key_type_name,
    mechanism_name,
    number,
    object_class_name,
    return_code_name,
    return_code_value,
    user_type_name,
)
from harness.pkcs11.vocabulary import (
    ATTRIBUTES,
    CURVES,
)
from harness.pkcs11.vocabulary import (
    CURVE_SIZES as _CURVE_SIZES,
)
from harness.pkcs11.vocabulary import (
    KEY_TYPES as _KEY_TYPES,
)
from harness.pkcs11.vocabulary import (
    MECHANISMS as _MECHANISMS,
)
from harness.pkcs11.vocabulary import (
    OBJECT_CLASSES as _OBJECT_CLASSES,
)
from harness.pkcs11.vocabulary import (
    RETURN_CODES as _RETURN_CODES,
)
from harness.pkcs11.vocabulary import (
    USER_TYPES as _USER_TYPES,
)

__all__ = [
    "ATTRIBUTES",
    "CURVES",
    "attribute_name",
    "curve_from_params",
    "curve_name",
    "curve_size",
    "exception_class_code",
    "key_type_name",
    "mechanism_name",
    "number",
    "object_class_name",
    "return_code_name",
    "return_code_value",
    "user_type_name",
]

# Plain views of the vocabulary for modules that look values up directly.
MECHANISMS: dict[int, str] = dict(_MECHANISMS.names)
MECHANISM_VALUES: dict[str, int] = dict(_MECHANISMS.values)
RETURN_CODES: dict[int, str] = dict(_RETURN_CODES.names)
RETURN_CODE_VALUES: dict[str, int] = dict(_RETURN_CODES.values)
OBJECT_CLASSES: dict[int, str] = dict(_OBJECT_CLASSES.names)
KEY_TYPES: dict[int, str] = dict(_KEY_TYPES.names)
USER_TYPES: dict[int, str] = dict(_USER_TYPES.names)

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
CURVE_SIZES = {**_CURVE_SIZES, "256-bit curve": 32, "384-bit curve": 48, "521-bit curve": 66}
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
    0x8010001F: "SCARD_E_UNSUPPORTED_FEATURE",
    0x8010002E: "SCARD_E_NO_READERS_AVAILABLE",
    0x80100066: "SCARD_W_UNRESPONSIVE_CARD",
    0x80100067: "SCARD_W_UNPOWERED_CARD",
    0x80100068: "SCARD_W_RESET_CARD",
    0x80100069: "SCARD_W_REMOVED_CARD",
}


def curve_size(curve: str | None) -> int | None:
    """Field size in bytes (also of "256-bit curve" told by a point's length):
    the longest input raw ECDSA takes without truncating."""
    return CURVE_SIZES.get(curve) if curve else None


def curve_from_point_length(length: int) -> str | None:
    return POINT_LENGTHS.get(length)


def scard_error_name(code: int) -> str | None:
    return SCARD_ERRORS.get(code)


# The functions of PKCS#11 3.0 (the interposer's 2.40 list and 3.0's new ones),
# to tell a function name in pasted text from any other C_ identifier.
FUNCTIONS = frozenset(PKCS11_FUNCTIONS) | frozenset(
    "C_" + name for name in (
        "GetInterfaceList GetInterface LoginUser SessionCancel MessageEncryptInit "
        "EncryptMessage EncryptMessageBegin EncryptMessageNext MessageEncryptFinal "
        "MessageDecryptInit DecryptMessage DecryptMessageBegin DecryptMessageNext "
        "MessageDecryptFinal MessageSignInit SignMessage SignMessageBegin SignMessageNext "
        "MessageSignFinal MessageVerifyInit VerifyMessage VerifyMessageBegin "
        "VerifyMessageNext MessageVerifyFinal"
    ).split()
)
