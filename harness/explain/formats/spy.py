"""OpenSC pkcs11-spy logs (`PKCS11SPY_OUTPUT`), as in seed 000.

A call is a block: `NN: C_Name`, a time line (`P:…; T:… date time` in newer
OpenSC, just `date time` in 0.23), `[in] …` / `[out] …` lines with hex dumps
under pointer/length items and attribute templates, and `Returned:  N CKR_…`.
OpenSC before 0.22 printed the mechanism without `[in]` and without spaces:
`pMechanism->type=CKM_RSA_PKCS`. A log cut off inside a call keeps that call
(without a return value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.explain import names
from harness.explain.model import Call, KeyBook, LogFormat, ParsedLog

HEADER = re.compile(r"^(\d+): (C_\w+)\s*$")
RETURNED = re.compile(r"^Returned:\s+(-?\d+)\s*(\S*)")
ITEM = re.compile(r"^\[(in|out)\] (.*?)\s*$")
HEXDUMP = re.compile(r"^\s+([0-9a-fA-F]{8})  (.*)$")
ATTRIBUTE = re.compile(r"^\s{2,}(CKA_\w+)\s*(.*?)\s*$")
POINTER_LEN = re.compile(r"/ (\d+)\s*$")
OLD_MECHANISM = re.compile(r"^pMechanism->type\s*=\s*(\S+)")  # OpenSC < 0.22
MECH_LINE = re.compile(r"^ (CKM_\w+|Unknown Mechanism \([0-9a-fA-F]+\))\s*$")

# [in] items whose length is the data handed to the token
DATA_ITEMS = ("pData[", "pPart[", "pEncryptedData[", "pEncryptedPart[")
PIN_ITEMS = ("pPin[", "pOldPin[", "pNewPin[")


@dataclass
class _Template:
    direction: str
    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    raw: dict[str, bytearray] = field(default_factory=dict)


@dataclass
class _Block:
    fn: str
    line: int
    items: dict[str, str] = field(default_factory=dict)
    templates: list[_Template] = field(default_factory=list)
    mechanisms: list[str] | None = None
    input_bytes: int | None = None
    pin_len: int | None = None


def hexdump_bytes(rest: str) -> bytes:
    """The bytes of one `00000000  06 08 2A …  ascii` dump line (hex column only)."""
    return bytes(int(tok, 16) for tok in re.findall(r"\b[0-9A-Fa-f]{2}\b", rest[:48]))


def parse(lines: list[str]) -> ParsedLog:
    book = KeyBook()
    block: _Block | None = None
    context: str | None = None  # "template", "mechlist", "dump:<attr>" …
    for number, line in enumerate(lines, start=1):
        header = HEADER.match(line)
        if header:
            if block is not None:  # previous call never returned (log cut off)
                book.add(_finish(block, number - 1, None, book))
            block = _Block(fn=header.group(2), line=number)
            context = None
            continue
        if block is None:
            continue
        returned = RETURNED.match(line)
        if returned:
            rv = names.return_code_name(returned.group(2) or int(returned.group(1)))
            book.add(_finish(block, number, rv, book))
            block = None
            continue
        item = ITEM.match(line)
        if item:
            context = _item(block, item.group(1), item.group(2))
            continue
        old = OLD_MECHANISM.match(line)
        if old:
            block.items["in:pMechanism->type"] = old.group(1)
            context = None
            continue
        if context == "mechlist":
            mech = MECH_LINE.match(line)
            if mech and block.mechanisms is not None:
                name = names.mechanism_name(mech.group(1))
                if name:
                    block.mechanisms.append(name)
            continue
        if block.templates and context is not None and context.startswith("template"):
            template = block.templates[-1]
            attribute = ATTRIBUTE.match(line)
            if attribute and not HEXDUMP.match(line):
                name = names.attribute_name(attribute.group(1))
                template.attributes[name] = attribute.group(2)
                template.raw[name] = bytearray()
                context = f"template:{name}"
                continue
            dump = HEXDUMP.match(line)
            if dump and ":" in context:
                template.raw[context.split(":", 1)[1]] += hexdump_bytes(dump.group(2))
    if block is not None:
        book.add(_finish(block, len(lines), None, book))
    return ParsedLog(
        format=LogFormat.PKCS11_SPY,
        calls=tuple(book.calls()),
        lines=tuple(lines),
    )


def _item(block: _Block, direction: str, text: str) -> str | None:
    """Record one `[in]`/`[out]` item; return the parsing context it opens."""
    # C_GetMechanismInfo prints `[in] type = CKM_ECDSA   [out] pInfo:` on one line.
    text = text.split("[out]", 1)[0].strip()
    if direction == "in" and text.startswith(DATA_ITEMS):
        length = POINTER_LEN.search(text)
        if length:
            block.input_bytes = int(length.group(1))
        return "data"
    if direction == "in" and text.startswith(PIN_ITEMS):
        length = POINTER_LEN.search(text)
        if length:
            block.pin_len = int(length.group(1))
        return "pin"
    if re.match(r"^p\w*Template\[\d+\]:", text):
        block.templates.append(_Template(direction, text.split("[", 1)[0]))
        return "template"
    if text.startswith("pMechanismList["):
        block.mechanisms = []
        return "mechlist"
    if "=" in text:
        key, value = (part.strip() for part in text.split("=", 1))
        block.items[f"{direction}:{key}"] = value
    return None


def _finish(block: _Block, end: int, rv: str | None, book: KeyBook) -> Call:
    items = block.items
    mechanism = items.get("in:pMechanism->type") or (
        items.get("in:type") if block.fn == "C_GetMechanismInfo" else None
    )
    in_templates = [t for t in block.templates if t.direction == "in"]
    out_templates = [t for t in block.templates if t.direction == "out"]
    attributes: dict[str, str] = {}
    raw: dict[str, bytearray] = {}
    for template in in_templates:
        attributes.update(template.attributes)
        raw.update(template.raw)
    curve = names.curve_from_params(bytes(raw["CKA_EC_PARAMS"])) if "CKA_EC_PARAMS" in raw else None
    key_type = names.key_type_name(attributes.get("CKA_KEY_TYPE"))
    object_class = names.object_class_name(attributes.get("CKA_CLASS"))

    if block.fn == "C_GenerateKeyPair" and rv == "CKR_OK":
        if key_type is None and mechanism and "RSA" in mechanism:
            key_type = "CKK_RSA"
        for key in ("out:hPublicKey", "out:hPrivateKey", "out:*phPublicKey", "out:*phPrivateKey"):
            book.learn(items.get(key), key_type=key_type, curve=curve)
    if block.fn == "C_CreateObject" and rv == "CKR_OK":
        book.learn(items.get("out:*phObject"), key_type=key_type, curve=curve)
    if block.fn == "C_GetAttributeValue":
        for template in out_templates:
            params = template.raw.get("CKA_EC_PARAMS")
            book.learn(
                items.get("in:hObject"),
                key_type=names.key_type_name(template.attributes.get("CKA_KEY_TYPE")),
                curve=names.curve_from_params(bytes(params)) if params else None,
            )
    salt = items.get("in:pMechanism->pParameter->sLen")
    param_text = ", ".join(
        f"{key.rsplit('->', 1)[1]}={value}"
        for key, value in items.items()
        if key.startswith("in:pMechanism->pParameter->")
    )
    return Call(
        fn=block.fn,
        line=block.line,
        end_line=end,
        rv=rv,
        mechanism=names.mechanism_name(mechanism),
        input_bytes=block.input_bytes,
        session=items.get("in:hSession"),
        key_handle=items.get("in:hKey"),
        key_type=key_type if block.fn in ("C_CreateObject", "C_GenerateKeyPair") else None,
        curve=curve,
        object_class=object_class if block.fn == "C_CreateObject" else None,
        template=tuple(attributes),
        user_type=items.get("in:userType"),
        pin_len=block.pin_len,
        mechanisms=tuple(block.mechanisms) if block.mechanisms is not None else None,
        params=param_text or None,
        salt_len=_int(salt),
    )


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    value = names.number(text.split()[0]) if text.split() else None
    return value
