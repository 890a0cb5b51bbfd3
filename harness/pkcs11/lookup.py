"""Reading PKCS#11 constants the way logs print them, into one spelling.

Logs disagree: pkcs11-spy prints `0x00001044` for mechanisms its table lacks,
p11-kit prints `CKM_0x00001044` and the old aliases (`CKM_ECDSA_KEY_PAIR_GEN`,
`CKA_ECDSA_PARAMS`), OpenSC prints `0x1044`, the interposer a name or `0x...`.
Everything becomes the PKCS#11 3.0 name of harness.pkcs11.vocabulary.
"""

from __future__ import annotations

import re

from harness.pkcs11.vocabulary import (
    ATTRIBUTES,
    CURVE_ALIASES,
    CURVE_SIZES,
    CURVES,
    KEY_TYPES,
    MECHANISMS,
    OBJECT_CLASSES,
    RETURN_CODES,
    USER_TYPES,
    Table,
)

_HEX_MECHANISM = re.compile(r"(?:CKM_)?0x([0-9a-fA-F]+)")


def number(text: str) -> int | None:
    """`160`, `0xa0`, `0x000000A0` -> int; anything else None (no int(x, 0) pitfalls)."""
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    return None


def _canonical(table: Table, text: str) -> str:
    value = table.value(text)
    return table.names[value] if value is not None else text


def mechanism_name(raw: str | int | None) -> str | None:
    """`CKM_ECDSA`, `0x00001044`, `CKM_0x00001044`, `4164`, 4164 -> a CKM_ name
    (unknown values as `0x%08x`)."""
    if raw is None:
        return None
    if isinstance(raw, int):
        return MECHANISMS.name(raw) or f"{raw:#010x}"
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
    return _canonical(MECHANISMS, text)


def return_code_name(raw: str | int | None) -> str | None:
    """`CKR_OK`, `0`, `0xa0`, 160 -> a CKR_ name (unknown codes keep their hex)."""
    if raw is None:
        return None
    if isinstance(raw, int):
        return RETURN_CODES.name(raw) or (
            f"CKR_VENDOR_{raw:#x}" if raw >= 0x80000000 else f"{raw:#x}"
        )
    text = raw.strip()
    if text.startswith("CKR_"):
        return text
    value = number(text)
    return return_code_name(value) if value is not None else text or None


def return_code_value(name: str) -> int | None:
    return RETURN_CODES.value(name)


def attribute_name(raw: str | int) -> str:
    if isinstance(raw, int):
        return ATTRIBUTES.name(raw) or f"{raw:#x}"
    text = raw.strip()
    value = number(text)
    if value is not None:
        return ATTRIBUTES.name(value) or text
    return _canonical(ATTRIBUTES, text)


def _named(table: Table, raw: str | int | None) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, int):
        return table.name(raw) or f"{raw:#x}"
    text = raw.strip()
    value = number(text)
    if value is not None:
        return _named(table, value)
    return _canonical(table, text) if text else None


def object_class_name(raw: str | int | None) -> str | None:
    return _named(OBJECT_CLASSES, raw)


def key_type_name(raw: str | int | None) -> str | None:
    return _named(KEY_TYPES, raw)


def user_type_name(raw: str | int | None) -> str | None:
    return _named(USER_TYPES, raw)


def curve_from_params(der: bytes) -> str | None:
    """Curve name from CKA_EC_PARAMS (a named-curve OID or a printable name)."""
    if der in CURVES:
        return CURVES[der][0]
    if len(der) > 2 and der[0] == 0x13:  # PrintableString, e.g. "prime256v1"
        return curve_name(der[2:].decode("ascii", "replace"))
    return None


def curve_name(raw: str | None) -> str | None:
    if not raw:
        return None
    return CURVE_ALIASES.get(raw.strip().lower(), raw.strip())


def curve_size(curve: str | None) -> int | None:
    """Field size in bytes: the longest input raw ECDSA takes without truncating."""
    return CURVE_SIZES.get(curve) if curve else None


# python-pkcs11 exception classes whose name is not the CKR_ name in CamelCase
_EXCEPTION_CODES = {
    "AnotherUserAlreadyLoggedIn": "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    "FunctionCancelled": "CKR_FUNCTION_CANCELED",
    "TokenNotRecognised": "CKR_TOKEN_NOT_RECOGNIZED",
}


def exception_return_code(exc: BaseException) -> str | None:
    """The CKR_ name a python-pkcs11 exception stands for (PinIncorrect ->
    CKR_PIN_INCORRECT), or None for exceptions that name no single code."""
    for cls in type(exc).__mro__:
        code = exception_class_code(cls.__name__)
        if code is not None:
            return code
    return None


def exception_class_code(name: str) -> str | None:
    """The CKR_ name of a python-pkcs11 exception class name (as a traceback prints it)."""
    if name in _EXCEPTION_CODES:
        return _EXCEPTION_CODES[name]
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).upper()
    return "CKR_" + snake if RETURN_CODES.value("CKR_" + snake) is not None else None
