"""This harness's own call records: one JSON object per line, written by the
C interposer (harness/interposer/).

Read with harness.interposer.calls.parse_records, the one reader of the format (line
numbers are kept for the excerpt), and tolerant of missing or extra fields:
a record file from an older or newer interposer, or one cut off mid-line by
a crash, still explains; torn lines and seq gaps are reported.

Fields used (see harness/interposer/calls.py for the full record): `fn`, `rv` (name,
"0x…" or a number), `pid` + `session`, `mechanism` ({"name", "value"}, a name
or a number), `key_handle`, `key` ({class, key_type, id, label, ec_params
hex}), `in_len`, `user_type`, `pin_len`, `template` ([{type, len, value?}])
and `mechanisms` (a C_GetMechanismList result). Lines are in the order the
calls ended.
"""

from __future__ import annotations

import json
from typing import Any

from harness.explain import names
from harness.explain.model import Call, KeyBook, LogFormat, ParsedLog
from harness.interposer.calls import parse_records
from harness.pkcs11.vocabulary import PIN_FLAGS


def looks_like_record(line: str) -> bool:
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return False
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    return isinstance(obj, dict) and str(obj.get("fn", "")).startswith("C_")


def _mechanism(raw: Any) -> str | None:
    if isinstance(raw, dict):
        return names.mechanism_name(raw.get("name") or raw.get("value"))
    if isinstance(raw, (str, int)):
        return names.mechanism_name(raw)
    return None


def _int(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw)
    return None


def _str(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    return str(raw)


def _session(rec: dict[str, Any]) -> str | None:
    """Session handles repeat across processes (every pkcs11-tool run gets 1)."""
    session = _str(rec.get("session"))
    if session is None or rec.get("pid") is None:
        return session
    return f"{rec['pid']}/{session}"


def _template(raw: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    types: list[str] = []
    values: dict[str, Any] = {}
    if not isinstance(raw, list):
        return (), {}
    for entry in raw:
        if not isinstance(entry, dict) or "type" not in entry:
            continue
        name = names.attribute_name(entry["type"])
        types.append(name)
        if "value" in entry:
            values[name] = entry["value"]
    return tuple(types), values


def _curve(key: dict[str, Any]) -> str | None:
    if key.get("curve"):
        return names.curve_name(str(key["curve"]))
    params = key.get("ec_params")
    if isinstance(params, str):
        try:
            return names.curve_from_params(bytes.fromhex(params))
        except ValueError:
            return None
    return None


def parse(lines: list[str]) -> ParsedLog:
    """The calls of record lines, read by harness.interposer.calls.parse_records (the one
    reader of this format); torn lines and seq gaps become `problems`."""
    book = KeyBook()
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    for number, line in numbered:
        read = parse_records(line)
        if read:
            book.add(_call(dict(read[0].raw), number))
        elif _loose_record(line):  # a record of an older interposer (no seq/rv)
            book.add(_call(json.loads(line), number))
    problems = parse_records("\n".join(line for _, line in numbered)).problems
    return ParsedLog(
        format=LogFormat.HARNESS,
        calls=tuple(book.calls()),
        lines=tuple(lines),
        problems=tuple(p for p in problems if "not a call record" not in p),
    )


def _loose_record(line: str) -> bool:
    try:
        rec = json.loads(line)
    except ValueError:
        return False
    return isinstance(rec, dict) and str(rec.get("fn", "")).startswith("C_")


def _call(rec: dict[str, Any], number: int) -> Call:
    fn = str(rec["fn"])
    rv_raw = rec.get("rv")
    rv = names.return_code_name(rv_raw) if isinstance(rv_raw, (str, int)) else None
    raw_key = rec.get("key")
    key: dict[str, Any] = raw_key if isinstance(raw_key, dict) else {}
    types, values = _template(rec.get("template"))
    object_class = None
    if fn == "C_CreateObject":
        cls = values.get("CKA_CLASS")
        object_class = names.object_class_name(cls) if isinstance(cls, (str, int)) else None
        if object_class is None and names.PRIVATE_KEY_MATERIAL & set(types):
            object_class = "CKO_PRIVATE_KEY"
    key_type = key.get("key_type")
    if fn in ("C_CreateObject", "C_GenerateKeyPair") and key_type is None:
        key_type = values.get("CKA_KEY_TYPE")
    mechanisms = rec.get("mechanisms")
    user_type = rec.get("user_type")
    return Call(
        fn=fn,
        line=number,
        end_line=number,
        rv=rv,
        mechanism=_mechanism(rec.get("mechanism")),
        input_bytes=_int(rec.get("in_len")),
        session=_session(rec),
        key_handle=_str(rec.get("key_handle", key.get("handle"))),
        key_type=names.key_type_name(key_type) if isinstance(key_type, (str, int)) else None,
        curve=_curve(key) or _curve({"ec_params": values.get("CKA_EC_PARAMS")}),
        object_class=object_class,
        template=types,
        user_type=names.user_type_name(user_type)
        if isinstance(user_type, (int, str))
        else None,
        pin_len=_int(rec.get("pin_len")),
        mechanisms=tuple(m for m in (_mechanism(x) for x in mechanisms) if m)
        if isinstance(mechanisms, list)
        else None,
        params=_params(rec.get("params")),
        salt_len=_int((rec.get("params") or {}).get("salt_len"))
        if isinstance(rec.get("params"), dict)
        else None,
        pin_flags=_pin_flags(rec.get("token_flags")),
        ec_point_len=_ec_point_len(rec) if fn == "C_GetAttributeValue" and rv == "CKR_OK"
        else None,
    )


def _ec_point_len(rec: dict[str, Any]) -> int | None:
    """The length of a CKA_EC_POINT the module returned (the value is not recorded)."""
    template = rec.get("template")
    for entry in template if isinstance(template, list) else ():
        if isinstance(entry, dict) and entry.get("type") == "CKA_EC_POINT":
            return _int(entry.get("len"))
    return None


def _params(raw: Any) -> str | None:
    if not isinstance(raw, dict) or not raw:
        return None
    return ", ".join(f"{key}={value}" for key, value in raw.items())


def _pin_flags(raw: Any) -> tuple[str, ...]:
    """The CKF_USER_PIN_* bits of a recorded C_GetTokenInfo's flags ("0x…")."""
    value = names.number(raw) if isinstance(raw, str) else None
    if value is None:
        return ()
    return tuple(name for bit, name in sorted(PIN_FLAGS.names.items()) if value & bit)
