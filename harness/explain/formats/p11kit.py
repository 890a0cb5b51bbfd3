"""p11-kit `log-calls: yes` output (written to stderr by the p11-kit wrapper).

A call is `C_Name`, then `  IN: name = value` / ` OUT: name = value` lines
(structures continue on tab-indented lines), then `C_Name = CKR_…`. Data
buffers print as `(length) "escaped text"`, templates in calls as a list of
attribute types, and most attribute values as `NOT-PRINTED`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.explain import names
from harness.explain.model import Call, KeyBook, LogFormat, ParsedLog

START = re.compile(r"^(C_\w+)\s*$")
END = re.compile(r"^(C_\w+) = (\S+)\s*$")
ITEM = re.compile(r"^\s*(IN|OUT): (\w+) = (.*?)\s*$")
FIELD = re.compile(r"^\t+(\w+): (.*?)\s*$")
LENGTH = re.compile(r"^\((\d+)\)")
ATTR_VALUE = re.compile(r"\{ (CKA_\w+) = (.*?) \}")

DATA_ITEMS = ("pData", "pPart", "pEncryptedData", "pEncryptedPart")
PIN_ITEMS = ("pPin", "pOldPin", "pNewPin")


@dataclass
class _Block:
    fn: str
    line: int
    items: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


def unescape(text: str) -> bytes:
    """Bytes of a p11-kit quoted buffer: `"\\x06\\x08*\\x86H"` -> b"\\x06\\x08*\\x86H"."""
    body = text.strip()
    body = body.removeprefix('"').removesuffix('"')
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", body[i + 2 : i + 4]):
                out.append(int(body[i + 2 : i + 4], 16))
                i += 4
                continue
            out += {"n": b"\n", "r": b"\r", "t": b"\t", "0": b"\0"}.get(
                nxt, nxt.encode("latin-1", "replace")
            )
            i += 2
            continue
        out += ch.encode("latin-1", "replace")
        i += 1
    return bytes(out)


def parse(lines: list[str]) -> ParsedLog:
    book = KeyBook()
    block: _Block | None = None
    for number, line in enumerate(lines, start=1):
        end = END.match(line)
        if end and block is not None and end.group(1) == block.fn:
            book.add(_finish(block, number, names.return_code_name(end.group(2)), book))
            block = None
            continue
        start = START.match(line)
        if start:
            if block is not None:
                book.add(_finish(block, number - 1, None, book))
            block = _Block(fn=start.group(1), line=number)
            continue
        if block is None:
            continue
        item = ITEM.match(line)
        if item:
            block.items[f"{item.group(1)}:{item.group(2)}"] = item.group(3)
            continue
        fld = FIELD.match(line)
        if fld:
            block.fields.setdefault(fld.group(1), fld.group(2))
    if block is not None:
        book.add(_finish(block, len(lines), None, book))
    return ParsedLog(format=LogFormat.P11_KIT, calls=tuple(book.calls()), lines=tuple(lines))


def _length(value: str | None) -> int | None:
    match = LENGTH.match(value or "")
    return int(match.group(1)) if match else None


def _handle(value: str | None) -> str | None:
    """`H2`, or the last part of `0x7FFE94916960 = H2`."""
    if not value:
        return None
    return value.rsplit("=", 1)[-1].strip() or None


def _types(value: str | None) -> tuple[str, ...]:
    if not value or "[" not in value:
        return ()
    inner = value[value.index("[") + 1 : value.rindex("]") if "]" in value else None]
    if "{" in inner:
        return tuple(names.attribute_name(m.group(1)) for m in ATTR_VALUE.finditer(inner))
    return tuple(names.attribute_name(t) for t in re.findall(r"CKA_\w+|\b\d+\b", inner))


def _finish(block: _Block, end: int, rv: str | None, book: KeyBook) -> Call:
    items = block.items
    input_bytes = next(
        (_length(items.get(f"IN:{n}")) for n in DATA_ITEMS if f"IN:{n}" in items), None
    )
    pin_len = next((_length(items.get(f"IN:{n}")) for n in PIN_ITEMS if f"IN:{n}" in items), None)
    mechanism = block.fields.get("mechanism") if "IN:pMechanism" in items else None
    if block.fn == "C_GetMechanismInfo":
        mechanism = items.get("IN:type")
    template = _types(items.get("IN:pTemplate"))
    for extra in ("IN:pPublicKeyTemplate", "IN:pPrivateKeyTemplate"):
        template += _types(items.get(extra))

    mechanisms: tuple[str, ...] | None = None
    listed = items.get("OUT:pMechanismList")
    if listed and "[" in listed:
        found = (names.mechanism_name(m) for m in re.findall(r"CKM_\w+", listed))
        mechanisms = tuple(m for m in found if m)

    # p11-kit shows only attribute types here: key material means a private key.
    key_material = names.PRIVATE_KEY_MATERIAL & set(template) or {
        "CKA_VALUE",
        "CKA_EC_PARAMS",
    } <= set(template)
    object_class = "CKO_PRIVATE_KEY" if block.fn == "C_CreateObject" and key_material else None

    if block.fn == "C_CreateObject" and rv == "CKR_OK" and object_class:
        book.learn(_handle(items.get("OUT:phObject")), key_type=None, curve=None)
    if block.fn == "C_GetAttributeValue" and "OUT:pTemplate" in items:
        values = dict(ATTR_VALUE.findall(items["OUT:pTemplate"]))
        values = {names.attribute_name(k): v for k, v in values.items()}
        curve = None
        params = values.get("CKA_EC_PARAMS", "")
        if '"' in params:
            curve = names.curve_from_params(unescape(params[params.index('"') :]))
        elif _length(params) == 10:
            curve = "P-256"  # only prime256v1's OID encodes to 10 bytes
        if curve is None and _length(values.get("CKA_EC_POINT")):
            curve = names.curve_from_point_length(_length(values.get("CKA_EC_POINT")) or 0)
        book.learn(
            _handle(items.get("IN:hObject")),
            key_type=names.key_type_name(values.get("CKA_KEY_TYPE")),
            curve=curve,
        )
    if block.fn == "C_GenerateKeyPair" and rv == "CKR_OK" and mechanism:
        key_type = "CKK_RSA" if "RSA" in mechanism else "CKK_EC" if "EC" in mechanism else None
        for out in ("OUT:phPublicKey", "OUT:phPrivateKey"):
            book.learn(_handle(items.get(out)), key_type=key_type)

    return Call(
        fn=block.fn,
        line=block.line,
        end_line=end,
        rv=rv,
        mechanism=names.mechanism_name(mechanism),
        input_bytes=input_bytes,
        session=_handle(items.get("IN:hSession")),
        key_handle=_handle(items.get("IN:hKey")),
        object_class=object_class,
        template=template,
        user_type=items.get("IN:userType"),
        pin_len=pin_len,
        mechanisms=mechanisms,
    )
