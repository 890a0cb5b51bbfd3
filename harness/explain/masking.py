"""The one place secrets are masked before text is kept or shown.

Three kinds of masking, one module:

- the PINs this process knows (`register`), in any form (text, hex, base64),
  out of any text or bytes (`mask_text`, `mask_bytes`): pytest's failure
  reports, raw pkcs11-spy logs. Masks keep the length, so a log masked in
  place keeps the offsets other readers hold into it. PINs shorter than
  MIN_LEN are not masked in free text (every "1" would go);
- by structure, in PKCS#11 call logs (`mask_lines`): pkcs11-spy dumps the PIN
  of C_Login and the CKA_VALUE (and RSA private components) of C_CreateObject
  in hex; p11-kit prints the PIN as a quoted string; pkcs11-logger prints the
  PIN when its flag 0x08 is set and every attribute value in hex; an OpenSC
  debug log dumps VERIFY and PUT DATA APDUs, which carry PINs and imported
  keys. Each masker keeps the line count, so line numbers still point into the
  original file;
- in command lines and log tails shown in reports (`mask_secrets`):
  `--pin 1234`, `pin-value=`, `pass:` and the hex dumps after pPin/CKA_VALUE;
  these need no log format and live in harness.explain.redact, which the
  readers below this module use too.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence

from harness.explain import names
from harness.explain.formats import opensc, pkcs11_logger
from harness.explain.model import LogFormat
from harness.explain.redact import mask_pasted, mask_secrets

__all__ = ["contains", "forms", "known", "mask_bytes", "mask_lines", "mask_secrets",
           "mask_text", "register"]

# --- the PINs of this run -----------------------------------------------------------
MIN_LEN = 4
_pins: set[str] = set()


def register(pin: str | None) -> None:
    """Remember a PIN of this run so later masking finds it."""
    if pin:
        _pins.add(pin)


def known() -> frozenset[str]:
    return frozenset(_pins)


def forms(pin: str) -> list[bytes]:
    """The ways a PIN shows up in logs and reports: as text, in hex (plain,
    spaced, either case, as pkcs11-spy and tracebacks print it) and base64."""
    raw = pin.encode()
    hexed = raw.hex()
    spaced = " ".join(f"{b:02x}" for b in raw)
    found = {raw, hexed.encode(), hexed.upper().encode(), spaced.encode(),
             spaced.upper().encode(), base64.b64encode(raw),
             base64.b64encode(raw).rstrip(b"=")}
    return sorted(found, key=len, reverse=True)  # longest first: hex before its digits


def _pattern(pins: frozenset[str]) -> re.Pattern[bytes] | None:
    alternatives = sorted({f for pin in pins if len(pin) >= MIN_LEN for f in forms(pin)},
                          key=len, reverse=True)
    if not alternatives:
        return None
    return re.compile(b"|".join(re.escape(a) for a in alternatives))


def mask_bytes(data: bytes, pins: frozenset[str] | None = None) -> bytes:
    """`data` with every form of every known PIN replaced by as many '*'."""
    pattern = _pattern(known() if pins is None else pins)
    if pattern is None:
        return data
    return pattern.sub(lambda m: b"*" * len(m.group(0)), data)


def mask_text(text: str, pins: frozenset[str] | None = None) -> str:
    """`text` with every form of every known PIN replaced by as many '*'."""
    masked = mask_bytes(text.encode("utf-8", "surrogateescape"), pins)
    return masked.decode("utf-8", "surrogateescape")


def contains(text: str, pins: frozenset[str] | None = None) -> bool:
    return mask_text(text, pins) != text


# --- PKCS#11 call logs, by structure ------------------------------------------------
MASK = "********"

# --- pkcs11-spy -----------------------------------------------------------------
SPY_PIN_ITEM = re.compile(r"^\[in\] p(?:Old|New)?Pin\[")
SPY_ATTRIBUTE = re.compile(r"^\s{2,}(CKA_\w+)\b")
SPY_BOUNDARY = re.compile(r"^(\[(in|out)\] |Returned:|\d+: C_\w+|\s*$|\s{2,}CKA_\w+)")


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _mask_spy(lines: Sequence[str]) -> list[str]:
    out: list[str] = []
    secret = False
    for line in lines:
        if SPY_PIN_ITEM.match(line):
            secret = True
            # keep `[in] pPin[ulPinLen] <pointer> / <length>`, never anything after it
            kept = re.match(r"^.*?/ \d+", line)
            out.append(kept.group(0) if kept else line.split("]", 1)[0] + f"] {MASK}")
            continue
        attribute = SPY_ATTRIBUTE.match(line)
        if attribute:
            secret = names.attribute_name(attribute.group(1)) in names.SECRET_ATTRIBUTES
            out.append(line)
            continue
        if SPY_BOUNDARY.match(line):
            secret = False
            out.append(line)
            continue
        out.append(f"{_indent(line) or '    '}{MASK} (masked)" if secret else line)
    return out


# --- p11-kit --------------------------------------------------------------------
P11KIT_PIN = re.compile(r"^(\s*(?:IN|OUT): p(?:Old|New)?Pin = (?:\(\d+\) )?)(.*)$")
P11KIT_SECRET_VALUE = re.compile(
    r"\{ (CKA_(?:" + "|".join(a[4:] for a in sorted(names.SECRET_ATTRIBUTES)) + r")) = [^}]*\}"
)


def _mask_p11kit(lines: Sequence[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        pin = P11KIT_PIN.match(line)
        if pin and pin.group(2) not in ("NULL", ""):
            line = f'{pin.group(1)}"{MASK}"'
        out.append(P11KIT_SECRET_VALUE.sub(lambda m: f"{{ {m.group(1)} = {MASK} }}", line))
    return out


# --- pkcs11-logger --------------------------------------------------------------
LOGGER_PIN = re.compile(r"^(\s*\*p(?:Old|New)?Pin: )(.*)$")
LOGGER_ATTRIBUTE = re.compile(r"^\s*Attribute: \d+ \((\w+)\)")
LOGGER_VALUE = re.compile(r"^(\s*\*pValue: )(.*)$")


def _mask_logger(lines: Sequence[str]) -> list[str]:
    out: list[str] = []
    secret = False
    for raw in lines:
        body = pkcs11_logger.strip_prefix(raw)
        prefix = raw[: len(raw) - len(body)]
        pin = LOGGER_PIN.match(body)
        if pin and "Intentionally hidden" not in pin.group(2):
            out.append(f"{prefix}{pin.group(1)}{MASK}")
            continue
        attribute = LOGGER_ATTRIBUTE.match(body)
        if attribute:
            secret = names.attribute_name(attribute.group(1)) in names.SECRET_ATTRIBUTES
        elif re.match(r"^\s*Attribute \d+\s*$", body) or "attribute template" in body:
            secret = False
        value = LOGGER_VALUE.match(body)
        if value and secret:
            out.append(f"{prefix}{value.group(1)}{MASK}")
            continue
        out.append(raw)
    return out


# --- OpenSC debug ---------------------------------------------------------------
# INS bytes whose data is a PIN or key material: VERIFY, CHANGE REFERENCE DATA,
# RESET RETRY COUNTER, PUT DATA (OpenPGP key import), SmartCard-HSM key import.
SENSITIVE_INS = frozenset({0x20, 0x21, 0x24, 0x2C, 0xDA, 0xDB, 0x74})
APDU_DUMP = re.compile(r"^\s*(?:[0-9A-Fa-f]{4,8}:\s*)?((?:[0-9A-Fa-f]{2} ){1,16})")
APDU_HEADER = re.compile(r"\b(Outgoing|Incoming) APDU \(\d+ bytes\)")


def _mask_opensc(lines: Sequence[str]) -> list[str]:
    """Mask the data of sensitive outgoing APDU dumps.

    The `Outgoing APDU (N bytes):` header is on an OpenSC log line or on a line
    of its own, depending on the version; the dump follows on unprefixed lines.
    """
    out: list[str] = []
    in_dump = sensitive = first = False
    for line in lines:
        header = APDU_HEADER.search(line)
        if header or opensc.match(line):
            in_dump = header is not None and header.group(1) == "Outgoing"
            sensitive = False
            first = in_dump
            out.append(line)
            continue
        dump = APDU_DUMP.match(line) if in_dump else None
        if not dump:
            in_dump = False
            out.append(line)
            continue
        tokens = dump.group(1).split()
        if first:
            first = False
            sensitive = len(tokens) > 1 and int(tokens[1], 16) in SENSITIVE_INS
            if sensitive:
                out.append(" ".join(tokens[:5]) + f" {MASK} (masked)")
                continue
        out.append(f"{MASK} (masked)" if sensitive else line)
    return out


# --- harness records ------------------------------------------------------------
def _mask_records(lines: Sequence[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if not isinstance(rec, dict):
            out.append(line)
            continue
        changed = False
        for key in ("pin", "pin_value", "old_pin", "new_pin"):
            if key in rec:
                rec[key] = MASK
                changed = True
        template = rec.get("template")
        if isinstance(template, list):
            for entry in template:
                if (
                    isinstance(entry, dict)
                    and "value" in entry
                    and names.attribute_name(entry.get("type", "")) in names.SECRET_ATTRIBUTES
                ):
                    entry["value"] = MASK
                    changed = True
        out.append(json.dumps(rec, separators=(",", ":")) if changed else line)
    return out


_MASKERS = {
    LogFormat.PKCS11_SPY: _mask_spy,
    LogFormat.P11_KIT: _mask_p11kit,
    LogFormat.PKCS11_LOGGER: _mask_logger,
    LogFormat.OPENSC_DEBUG: _mask_opensc,
    LogFormat.HARNESS: _mask_records,
    LogFormat.PASTED: mask_pasted,
}


def mask_lines(lines: Sequence[str], fmt: LogFormat) -> list[str]:
    """The lines with PINs and key material replaced; same number of lines.

    The maskers of the other formats run too: pasted logs mix formats (seed
    000 has pkcs11-spy and OpenSC debug lines), and each masker only touches
    lines of its own shape.
    """
    masked = list(lines)
    # formats without a masker of their own (tpm2-pkcs11, NSS) log no PIN or key value
    for masker in [*([_MASKERS[fmt]] if fmt in _MASKERS else []),
                   *(m for f, m in _MASKERS.items() if f is not fmt)]:
        masked = masker(masked)
    if len(masked) != len(lines):  # pragma: no cover - a masker bug must not shift lines
        raise RuntimeError("masking changed the number of lines")
    return masked
