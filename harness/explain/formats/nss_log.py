"""NSS's PKCS#11 debug log of one module (NSS_DEBUG_PKCS11_MODULE=NAME with
NSPR_LOG_MODULES=nss_mod_log:4 and NSPR_LOG_FILE):

    -1944180928[56336fdc1c80]: C_SignInit
    -1944180928[56336fdc1c80]:   hSession = 0x9
    -1944180928[56336fdc1c80]:   hKey = 0x6
    -1944180928[56336fdc1c80]:       mechanism = CKM_ECDSA
    -1944180928[56336fdc1c80]:   rv = CKR_OK

Every line starts with the NSPR thread id and address (with NSPR_LOG_MODULES
`timestamp`, a UTC time before that); a call is its name, its arguments two
spaces in, template attributes four (`CKA_CLASS = CKO_PRIVATE_KEY [8]`), the
mechanism six, and ends with `rv =`. NSS prints the PIN's length, never the
PIN (`pPin` is an address).
"""

from __future__ import annotations

import re

from harness.explain import names
from harness.explain.model import Call, KeyBook, LogFormat, ParsedLog

PREFIX = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ UTC - )?-?\d+\[[0-9a-fA-F]+\]: ")
HEADER = re.compile(r"^(C_\w+)\s*$")
FIELD = re.compile(r"^(?P<indent> +)(?P<name>\*?\w+) = (?P<value>.*?)\s*$")
ATTRIBUTE_LEN = re.compile(r"^(?P<value>.*?) \[(?P<len>\d+)\]$")


def looks_like(line: str) -> bool:
    found = PREFIX.match(line)
    if not found:
        return False
    rest = line[found.end():]
    return bool(HEADER.match(rest) or FIELD.match(rest))


def _int(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def parse(lines: list[str]) -> ParsedLog:
    book = KeyBook()
    state: dict[str, object] | None = None

    def flush(end: int) -> None:
        if state is None:
            return
        fields = state["fields"]
        template = state["template"]
        assert isinstance(fields, dict) and isinstance(template, dict)
        fn = str(state["fn"])
        rv = fields.get("rv")
        key_type = template.get("CKA_KEY_TYPE")
        curve = None
        params = template.get("CKA_EC_PARAMS") or template.get("CKA_ECDSA_PARAMS")
        if params:
            try:
                curve = names.curve_from_params(bytes.fromhex(params))
            except ValueError:
                curve = None
        handle = fields.get("hKey") or fields.get("hObject")
        if fn == "C_GetAttributeValue" and handle and (key_type or curve):
            book.learn(handle, key_type=names.key_type_name(key_type) if key_type else None,
                       curve=curve)
        data = fields.get("ulDataLen") or fields.get("ulPartLen")
        pin_len = fields.get("ulPinLen")
        user_type = fields.get("userType")
        object_class = template.get("CKA_CLASS") if fn == "C_CreateObject" else None
        if fn == "C_CreateObject" and object_class is None and (
                names.PRIVATE_KEY_MATERIAL & set(template)):
            object_class = "CKO_PRIVATE_KEY"
        mechanism = state.get("mechanism")
        book.add(Call(
            fn=fn, line=int(str(state["line"])), end_line=end,
            rv=names.return_code_name(rv) if rv else None,
            mechanism=names.mechanism_name(mechanism) if isinstance(mechanism, str) else None,
            input_bytes=_int(data) if data else None,
            session=fields.get("hSession"),
            key_handle=fields.get("hKey"),
            key_type=names.key_type_name(key_type) if key_type and fn in (
                "C_CreateObject", "C_GenerateKeyPair") else None,
            curve=curve if fn in ("C_CreateObject", "C_GenerateKeyPair") else None,
            object_class=names.object_class_name(object_class) if object_class else None,
            template=tuple(template),
            user_type=names.user_type_name(_int(user_type)) if user_type else None,
            pin_len=_int(pin_len) if pin_len else None,
        ))

    end = 0
    for number, raw in enumerate(lines, start=1):
        found = PREFIX.match(raw)
        if not found:
            continue
        rest = raw[found.end():].rstrip()
        header = HEADER.match(rest)
        if header:
            flush(end)
            state = {"fn": header.group(1), "line": number, "fields": {}, "template": {}}
            end = number
            continue
        field = FIELD.match(rest)
        if field is None or state is None:
            continue
        end = number
        indent, name, value = len(field.group("indent")), field.group("name"), field.group("value")
        if indent >= 6 and name == "mechanism":
            state["mechanism"] = value
        elif indent >= 4 and (name.startswith("CKA_") or name.startswith("0x")):
            sized = ATTRIBUTE_LEN.match(value)
            template = state["template"]
            assert isinstance(template, dict)
            shown = sized.group("value") if sized else value
            template[names.attribute_name(name) if name.startswith("0x") else name] = (
                shown if not shown.startswith("[") else None)
        else:
            fields = state["fields"]
            assert isinstance(fields, dict)
            fields.setdefault(name, value)
    flush(end)
    return ParsedLog(format=LogFormat.NSS_DEBUG, calls=tuple(book.calls()), lines=tuple(lines))
