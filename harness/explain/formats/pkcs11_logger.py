"""Pkcs11Interop's pkcs11-logger (`PKCS11_LOGGER_LOG_FILE_PATH`).

Every line starts with `0x<pid> : 0x<tid> : ` (either part can be switched
off with PKCS11_LOGGER_FLAGS). A call is a `*****… date ***` separator,
`Calling C_Name`, `Input` / `Output` sections with ` name: value` lines
(numbers print as `4161 (CKM_ECDSA)`, buffers as `HEX(…)`, templates as
`Attribute N` groups) and `Returning 0 (CKR_OK)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.explain import names
from harness.explain.model import Call, KeyBook, LogFormat, ParsedLog

PREFIX = re.compile(r"^(?:0x[0-9a-fA-F]+ : ){0,2}")
CALLING = re.compile(r"^Calling (C_\w+)\s*$")
RETURNING = re.compile(r"^Returning (\d+) \(([^)]*)\)")
FIELD = re.compile(r"^(\s*)(\*?\w+(?:\[\d+\])?): ?(.*?)\s*$")
NAMED_NUMBER = re.compile(r"^(\d+) \((\w+)\)")
HEX = re.compile(r"^HEX\(([0-9A-Fa-f]*)\)")

LENGTH_FIELDS = {
    "ulDataLen": "input",
    "ulPartLen": "input",
    "ulEncryptedDataLen": "input",
    "ulEncryptedPartLen": "input",
    "ulPinLen": "pin",
    "ulOldLen": "pin",
    "ulNewLen": "pin",
}


def strip_prefix(line: str) -> str:
    return PREFIX.sub("", line, count=1)


@dataclass
class _Attribute:
    name: str = ""
    value: bytes | None = None
    length: int | None = None


@dataclass
class _Block:
    fn: str
    line: int
    section: str = "Input"
    values: dict[str, str] = field(default_factory=dict)
    templates: dict[str, list[_Attribute]] = field(default_factory=dict)
    mechanisms: list[str] | None = None


def parse(lines: list[str]) -> ParsedLog:
    book = KeyBook()
    block: _Block | None = None
    for number, raw in enumerate(lines, start=1):
        line = strip_prefix(raw)
        calling = CALLING.match(line)
        if calling:
            if block is not None:
                book.add(_finish(block, number - 1, None, book))
            block = _Block(fn=calling.group(1), line=number)
            continue
        if block is None:
            continue
        returning = RETURNING.match(line)
        if returning:
            rv = returning.group(2) if returning.group(2).startswith("CKR_") else None
            book.add(
                _finish(block, number, names.return_code_name(rv or int(returning.group(1))), book)
            )
            block = None
            continue
        if line.strip() in ("Input", "Output"):
            block.section = line.strip()
            continue
        if "*** Begin attribute template ***" in line:
            block.templates.setdefault(block.section, [])
            continue
        template = block.templates.get(block.section)
        if template is not None and re.fullmatch(r"Attribute \d+", line.strip()):
            template.append(_Attribute())
            continue
        fld = FIELD.match(line)
        if not fld:
            continue
        name, value = fld.group(2), fld.group(3)
        if template and name in ("Attribute", "*pValue", "ulValueLen"):
            _attribute_field(template[-1], name, value)
            continue
        if name.startswith("pMechanismList["):
            named = NAMED_NUMBER.match(value)
            if named:
                block.mechanisms = block.mechanisms or []
                block.mechanisms.append(names.mechanism_name(named.group(2)) or named.group(2))
            continue
        block.values.setdefault(f"{block.section}:{name}", value)
    if block is not None:
        book.add(_finish(block, len(lines), None, book))
    return ParsedLog(format=LogFormat.PKCS11_LOGGER, calls=tuple(book.calls()), lines=tuple(lines))


def _attribute_field(attribute: _Attribute, name: str, value: str) -> None:
    if name == "Attribute":
        named = NAMED_NUMBER.match(value)
        attribute.name = names.attribute_name(named.group(2) if named else value)
    elif name == "ulValueLen" and value.isdigit():
        attribute.length = int(value)
    elif name == "*pValue":
        hexed = HEX.match(value)
        if hexed and len(hexed.group(1)) % 2 == 0:
            attribute.value = bytes.fromhex(hexed.group(1))


def _ulong(data: bytes | None) -> int | None:
    """CK_ULONG values are dumped in host order (little-endian on x86/ARM)."""
    if data is None or len(data) not in (4, 8):
        return None
    return int.from_bytes(data, "little")


def _named(value: str | None) -> str | None:
    if value is None:
        return None
    named = NAMED_NUMBER.match(value)
    return named.group(2) if named else value


def _finish(block: _Block, end: int, rv: str | None, book: KeyBook) -> Call:
    values = block.values
    input_bytes = pin_len = None
    for name, kind in LENGTH_FIELDS.items():
        raw = values.get(f"Input:{name}")
        if raw and raw.isdigit():
            if kind == "input" and input_bytes is None:
                input_bytes = int(raw)
            elif kind == "pin" and pin_len is None:
                pin_len = int(raw)
    mechanism = _named(values.get("Input:mechanism"))
    if block.fn == "C_GetMechanismInfo":
        mechanism = _named(values.get("Input:type"))
    in_template = block.templates.get("Input", [])
    attrs = {a.name: a for a in in_template if a.name}
    object_class = key_type = curve = None
    if "CKA_CLASS" in attrs:
        number = _ulong(attrs["CKA_CLASS"].value)
        object_class = names.object_class_name(number) if number is not None else None
    if "CKA_KEY_TYPE" in attrs:
        number = _ulong(attrs["CKA_KEY_TYPE"].value)
        key_type = names.key_type_name(number) if number is not None else None
    if "CKA_EC_PARAMS" in attrs and attrs["CKA_EC_PARAMS"].value:
        curve = names.curve_from_params(attrs["CKA_EC_PARAMS"].value or b"")

    if block.fn == "C_GetAttributeValue":
        out = {a.name: a for a in block.templates.get("Output", []) if a.name}
        kt = _ulong(out["CKA_KEY_TYPE"].value) if "CKA_KEY_TYPE" in out else None
        params = out["CKA_EC_PARAMS"].value if "CKA_EC_PARAMS" in out else None
        book.learn(
            values.get("Input:hObject"),
            key_type=names.key_type_name(kt) if kt is not None else None,
            curve=names.curve_from_params(params) if params else None,
        )
    if block.fn == "C_CreateObject" and rv == "CKR_OK":
        book.learn(values.get("Output:*phObject"), key_type=key_type, curve=curve)
    if block.fn == "C_GenerateKeyPair" and rv == "CKR_OK":
        for out_name in ("*phPublicKey", "*phPrivateKey"):
            book.learn(values.get(f"Output:{out_name}"), key_type=key_type, curve=curve)
    return Call(
        fn=block.fn,
        line=block.line,
        end_line=end,
        rv=rv,
        mechanism=names.mechanism_name(mechanism),
        input_bytes=input_bytes,
        session=values.get("Input:hSession"),
        key_handle=values.get("Input:hKey"),
        key_type=key_type if block.fn in ("C_CreateObject", "C_GenerateKeyPair") else None,
        curve=curve,
        object_class=object_class if block.fn == "C_CreateObject" else None,
        template=tuple(attrs),
        user_type=_named(values.get("Input:userType")),
        pin_len=pin_len,
        mechanisms=tuple(block.mechanisms) if block.mechanisms is not None else None,
    )
