"""OpenSC debug logs (`OPENSC_DEBUG=9` or `debug = 9` in opensc.conf), as in seed 001.

Lines look like `P:5273; T:0x1402… 10:00:37.832 [opensc-pkcs11] file.c:NNN:func: text`
(0.23 on Linux; Windows builds put a date before the time, pasted excerpts often
keep only `time file.c:NNN:func: text`). APDU hex dumps continue on unprefixed
lines. There is no per-call block: a PKCS#11 call ends with a
`C_Name() = CKR_…` line, and everything logged since the previous one (the
mechanism, data lengths, APDUs, reader errors, OpenSC error codes) belongs
to it. Activity that never reaches such a line (a pasted excerpt) is kept as
a call whose function is inferred from OpenSC's internal function names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.explain import names
from harness.explain.model import Call, KeyBook, LogFormat, ParsedLog

LINE = re.compile(
    r"^(?:P:\d+;\s*T:\S+\s+)?"
    r"(?:\d{4}-\d\d-\d\d[ T])?"
    r"(?:\d\d:\d\d:\d\d(?:[.,]\d+)?\s+)?"
    r"(?:\[(?P<app>[^\]]+)\]\s*)?"
    r"(?:(?P<src>[\w.+-]+\.c):(?P<lineno>\d+):(?P<func>\w+):\s?)?"
    r"(?P<msg>.*)$"
)
OPENSC_APP = re.compile(r"opensc|pkcs1[15]|-tool|cardos|piv|openpgp", re.IGNORECASE)
RESULT = re.compile(r"\b(C_\w+)\(\)\s*=\s*(CKR_\w+|0x[0-9a-fA-F]+)")
MECHANISM = re.compile(r"\bmechanism (0x[0-9a-fA-F]+)")
KEY_TYPE = re.compile(r"\bkey-type (0x[0-9a-fA-F]+)")
DATA_LENGTH = re.compile(r"\bdata part length (\d+)")
APDU = re.compile(
    r"\bCLA:([0-9A-Fa-f]+), INS:([0-9A-Fa-f]+), P1:([0-9A-Fa-f]+), P2:([0-9A-Fa-f]+), data\((\d+)\)"
)
WIRE = re.compile(r"\b(Outgoing|Incoming) APDU \((\d+) bytes\)")
HEX_BYTES = re.compile(r"^\s*(?:[0-9A-Fa-f]{4,8}:?\s+)?((?:[0-9A-Fa-f]{2}(?:\s|$))+)")
# SCardControl 0x8010001F (SCARD_E_UNSUPPORTED_FEATURE): OpenSC probing a
# reader feature (PIN pad, ...) the reader lacks; in nearly every log, harmless.
SCARD_NOISE = {("SCardControl", 0x8010001F)}
SCARD = re.compile(r"\b(SCard\w+(?:/\w+)?) failed: (0x[0-9a-fA-F]+)")
SC_ERROR = re.compile(r"(-\d{3,4}) \(([^)]+)\)")
CURVE = re.compile(r"Found known curve '([\w-]+)'")
# OpenSC errors that mean the APDU did not make it or the card could not take it
TRANSMIT_ERRORS = (
    "Transmit failed",
    "unable to transmit",
    "APDU transmit failed",
    "Card removed",
    "Card reset",
    "Reader detached",
    "Wrong length",
    "Not enough memory on card",
)
# Errors that are normal noise at debug level 9
NOISE = ("No readers found", "Requested object not found", "Not supported", "File not found")

# OpenSC internals -> the PKCS#11 call they serve (for excerpts without `C_x() =` lines)
INFERRED = (
    ("sc_pkcs15init_store_private_key", "C_CreateObject"),
    ("pkcs15_create_private_key", "C_CreateObject"),
    ("sc_pkcs15init_generate_key", "C_GenerateKeyPair"),
    ("pkcs15_gen_keypair", "C_GenerateKeyPair"),
    ("compute_signature", "C_Sign"),
    ("pkcs15_prkey_sign", "C_Sign"),
    ("sc_pkcs11_signature_update", "C_SignUpdate"),
    ("sc_pkcs11_sign_init", "C_SignInit"),
    ("pkcs15_prkey_decrypt", "C_Decrypt"),
    ("sc_pin_cmd", "C_Login"),
)


def match(line: str) -> re.Match[str] | None:
    """The parts of one OpenSC log line, or None if it is not one (hex dump, prose)."""
    found = LINE.match(line)
    if found and (found.group("src") or OPENSC_APP.search(found.group("app") or "")):
        return found
    return None


@dataclass
class _Pending:
    line: int
    fn: str | None = None
    funcs: list[str] = field(default_factory=list)
    mechanism: str | None = None
    key_type: str | None = None
    curve: str | None = None
    input_bytes: int | None = None
    apdu_bytes: int | None = None
    apdu_wire: int | None = None
    reader_error: str | None = None
    errors: list[str] = field(default_factory=list)
    status_word: str | None = None  # the last error SW of an incoming APDU

    @property
    def interesting(self) -> bool:
        return any(
            (self.mechanism, self.input_bytes, self.apdu_bytes, self.reader_error, self.errors,
             self.status_word)
        )


def parse(lines: list[str]) -> ParsedLog:
    book = KeyBook()
    pending: _Pending | None = None
    last_line = 0
    response: list[str] | None = None  # hex bytes of an incoming APDU being read
    for number, line in enumerate(lines, start=1):
        found = match(line)
        if not found:
            if response is not None and (dump := HEX_BYTES.match(line)):
                response.extend(dump.group(1).split())
            continue
        if response is not None and pending is not None:
            _status(pending, response)
        response = None
        wire = WIRE.search(found.group("msg"))
        if wire and wire.group(1) == "Incoming":
            # the dump follows on unprefixed lines (or after the colon)
            tail = found.group("msg")[wire.end():].lstrip(": ")
            response = tail.split() if HEX_BYTES.match(tail) else []
        msg = found.group("msg")
        func = found.group("func") or ""
        result = RESULT.search(msg)
        if pending is not None and func.startswith("C_") and pending.fn and func != pending.fn:
            # a new PKCS#11 call began before the previous one logged its result
            _flush(book, pending, last_line)
            pending = None
        if pending is None:
            pending = _Pending(line=number)
        last_line = number
        if func.startswith("C_") and pending.fn is None:
            pending.fn = func
        if func:
            pending.funcs.append(func)
        _absorb(pending, msg)
        if result:
            pending.fn = result.group(1)
            book.add(_call(pending, number, names.return_code_name(result.group(2))))
            pending = None
    if response is not None and pending is not None:
        _status(pending, response)
    if pending is not None:
        _flush(book, pending, last_line)
    return ParsedLog(format=LogFormat.OPENSC_DEBUG, calls=tuple(book.calls()), lines=tuple(lines))


def _absorb(pending: _Pending, msg: str) -> None:
    if m := MECHANISM.search(msg):
        pending.mechanism = pending.mechanism or names.mechanism_name(m.group(1))
    if m := KEY_TYPE.search(msg):
        pending.key_type = names.key_type_name(m.group(1))
    if m := DATA_LENGTH.search(msg):
        pending.input_bytes = (pending.input_bytes or 0) + int(m.group(1))
    if m := APDU.search(msg):
        pending.apdu_bytes = max(pending.apdu_bytes or 0, int(m.group(5)))
    if (m := WIRE.search(msg)) and m.group(1) == "Outgoing":
        pending.apdu_wire = max(pending.apdu_wire or 0, int(m.group(2)))
    if m := CURVE.search(msg):
        pending.curve = names.curve_name(m.group(1))
    # SCardTransmit / SCardControl; SCardEstablishContext etc. only mean "no pcscd"
    scard = SCARD.search(msg)
    if scard and (scard.group(1).split("/")[0], int(scard.group(2), 16)) in SCARD_NOISE:
        scard = None
    if (m := scard) and ("Transmit" in m.group(1) or "Control" in m.group(1)):
        label = names.scard_error_name(int(m.group(2), 16))
        pending.reader_error = f"{m.group(1)} failed: {m.group(2)}" + (
            f" ({label})" if label else ""
        )
    if m := SC_ERROR.search(msg):
        text = m.group(2)
        if not any(noise in text for noise in NOISE):
            pending.errors.append(msg.strip())
        if (
            any(marker.lower() in msg.lower() for marker in TRANSMIT_ERRORS)
            and not pending.reader_error
        ):
            pending.reader_error = msg.strip()


def _status(pending: _Pending, response: list[str]) -> None:
    """Keep the status word of a response unless it is a success (9000, 61xx)."""
    if len(response) < 2:
        return
    sw = (response[-2] + response[-1]).upper()
    if sw != "9000" and not sw.startswith("61"):
        pending.status_word = sw


def _detail(errors: list[str]) -> str | None:
    """The most telling OpenSC error: one with an explanation before the code."""
    generic = ("returning with", "libopensc return value")
    specific = [e for e in errors if not any(g in e for g in generic)]
    chosen = specific or errors
    return chosen[-1] if chosen else None


def _call(pending: _Pending, end: int, rv: str | None, inferred: bool = False) -> Call:
    fn = pending.fn or "?"
    object_class = "CKO_PRIVATE_KEY" if "store_private_key" in " ".join(pending.funcs) else None
    return Call(
        fn=fn,
        line=pending.line,
        end_line=end,
        rv=rv,
        mechanism=pending.mechanism,
        input_bytes=pending.input_bytes,
        key_type=pending.key_type or ("CKK_EC" if pending.curve else None),
        curve=pending.curve,
        object_class=object_class if fn == "C_CreateObject" else None,
        apdu_bytes=pending.apdu_bytes,
        apdu_wire_bytes=pending.apdu_wire,
        reader_error=pending.reader_error,
        detail=_detail(pending.errors),
        status_word=pending.status_word,
        inferred=inferred,
    )


def _flush(book: KeyBook, pending: _Pending, end: int) -> None:
    """Keep an unfinished call only if it shows something worth explaining."""
    if not pending.interesting:
        return
    if pending.fn is None:
        joined = " ".join(pending.funcs)
        pending.fn = next((fn for internal, fn in INFERRED if internal in joined), None)
        if pending.fn is None:
            return
        book.add(_call(pending, end, None, inferred=True))
        return
    book.add(_call(pending, end, None))
