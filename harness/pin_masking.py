"""The PINs this process knows, and masking them out of text before it is kept.

Whatever may carry a PIN into a file or a report (pytest's failure reports,
the raw pkcs11-spy logs) passes through `mask_text` or `mask_bytes`. Masks
keep the length, so a log masked in place keeps the offsets other readers
hold into it. PINs shorter than MIN_LEN are not masked in free text (every
"1" would go); pkcs11-spy's PIN dumps are masked by structure in any case.
"""

from __future__ import annotations

import base64
import re

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
