"""Secrets in free text, whatever printed it: PINs in command lines, URIs,
code and configuration quoted in pasted text, and the hex dumps pkcs11-spy
prints after pPin/CKA_VALUE. No log format is needed, so the readers of
harness.explain.formats use it too; harness.explain.masking adds the maskers
that know each format's structure."""

from __future__ import annotations

import re
from collections.abc import Sequence

_SECRET = re.compile(r"(?i)(\bpin-value=|\bpin=|\bpass:|--pin[= ]|-pin )[^\s;&\"']+")
_HEXDUMP = re.compile(r"^\s*[0-9a-fA-F]{8}\s+(?:[0-9a-fA-F]{2}\s)+")
_SECRET_DUMP_HEAD = re.compile(r"pPin\b|CKA_VALUE\b")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def mask_secrets(lines: list[str], *, in_dump: bool = False) -> list[str]:
    """Mask PINs in command lines and the hex dumps pkcs11-spy prints after
    `pPin` and `CKA_VALUE` (so a shared report never carries them); control
    characters become '?'. `in_dump`: the lines start inside a hex dump."""
    out = []
    for line in lines:
        if _HEXDUMP.match(line):
            if in_dump:
                out.append("    ******** (masked)")
                continue
        else:
            in_dump = bool(_SECRET_DUMP_HEAD.search(line))
        out.append(_CONTROL.sub("?", _SECRET.sub(lambda m: m.group(1) + "***", line)))
    return out


# Pasted tracebacks quote source lines: `token.open(user_pin="1234")`, `session.login("1234")`,
# `PIN = 123456` in a configuration, `--so-pin 3537363231383830`.
_PASTED_SECRET = re.compile(
    r"(?i)(\b(?:user_?|so_?|new_?|old_?)?pin(?:_?code|_?value)?\s*[=:]\s*|"
    r"\bpassword\s*[=:]\s*|--(?:so-|new-)?pin[= ]|\.login\(\s*(?:[\w.]+\s*,\s*)*)"
    r"([\"']?)[^\s\"',;)&]+"
)


def mask_pasted(lines: Sequence[str]) -> list[str]:
    """Pasted text: PINs in command lines, URIs, code and configuration quoted
    in it, and the hex dumps after pPin/CKA_VALUE."""
    return [_PASTED_SECRET.sub(lambda m: m.group(1) + m.group(2) + "***", line)
            for line in mask_secrets(list(lines))]
