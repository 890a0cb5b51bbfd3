"""What a smart card's status word (SW1 SW2, ISO 7816-4) means, for the
failing APDU of an OpenSC debug log."""

from __future__ import annotations

# SW -> meaning; 63Cx and 6Cxx are handled by pattern in `meaning`.
STATUS_WORDS = {
    "6281": "part of the returned data may be corrupted",
    "6283": "the selected file or key is deactivated",
    "6400": "execution error, the card's state is unchanged",
    "6581": "memory failure on the card",
    "6700": "wrong length: the card refuses the command's data length (Lc/Le), "
            "often a buffer or extended-length limit",
    "6881": "logical channel not supported",
    "6882": "secure messaging not supported",
    "6982": "security status not satisfied: the key needs a login (or a fresh PIN "
            "verification) first",
    "6983": "authentication method blocked: the PIN is locked",
    "6984": "reference data not usable (PIN or key blocked or not initialised)",
    "6985": "conditions of use not satisfied: the key may not be used this way "
            "(algorithm, usage flags or state)",
    "6986": "command not allowed (no current file or key)",
    "6A80": "incorrect data field: the card refuses the data it was given "
            "(wrong format or length for this algorithm)",
    "6A81": "function not supported by the card",
    "6A82": "file or application not found",
    "6A84": "not enough memory space on the card",
    "6A86": "incorrect parameters P1/P2 (the card does not know this algorithm or key reference)",
    "6A88": "referenced data (key) not found",
    "6B00": "wrong parameters P1/P2",
    "6D00": "instruction not supported by the card",
    "6E00": "class not supported by the card",
    "6F00": "no precise diagnosis: the card failed internally (an exception in the card's "
            "applet, often while processing more data than it can hold, or a firmware bug)",
}


def meaning(sw: str) -> str:
    sw = sw.upper()
    if sw in STATUS_WORDS:
        return STATUS_WORDS[sw]
    if sw.startswith("63C"):
        return f"verification failed, {int(sw[3], 16)} tries left"
    if sw.startswith("6C"):
        return f"wrong Le: the card has {int(sw[2:], 16)} bytes to return"
    if sw.startswith("6A") or sw.startswith("69"):
        return "the card refused the command (ISO 7816-4 checking error)"
    return "an error status (ISO 7816-4)"
