"""The one PKCS#11 vocabulary of the harness: names and numbers of mechanisms,
return codes, attributes, object classes, key types, user types, MGFs, PIN
flags and named curves (`vocabulary`), reading them as logs print them
(`lookup`) and the C interposer's generated name tables (`c_header`).
"""

from __future__ import annotations

from harness.pkcs11.lookup import (
    attribute_name,
    curve_from_params,
    curve_name,
    curve_size,
    exception_class_code,
    exception_return_code,
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
    KEY_TYPES,
    MECHANISMS,
    MGFS,
    OBJECT_CLASSES,
    PIN_FLAGS,
    RETURN_CODES,
    TABLES,
    USER_TYPES,
    Table,
)

__all__ = [
    "ATTRIBUTES",
    "CURVES",
    "KEY_TYPES",
    "MECHANISMS",
    "MGFS",
    "OBJECT_CLASSES",
    "PIN_FLAGS",
    "RETURN_CODES",
    "TABLES",
    "USER_TYPES",
    "Table",
    "attribute_name",
    "curve_from_params",
    "curve_name",
    "curve_size",
    "exception_class_code",
    "exception_return_code",
    "key_type_name",
    "mechanism_name",
    "number",
    "object_class_name",
    "return_code_name",
    "return_code_value",
    "user_type_name",
]
