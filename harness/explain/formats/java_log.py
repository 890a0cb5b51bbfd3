"""What a Java SunPKCS11 log says about mechanisms it will not use.

With `showInfo = true` in the provider configuration, SunPKCS11 prints each
mechanism of the token (`Mechanism CKM_ECDSA_SHA256:` and its info) and,
for one the configuration's disabledMechanisms / enabledMechanisms exclude,
the line `DISABLED in configuration`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MECHANISM = re.compile(r"\bMechanism (CKM_\w+)")
DISABLED = "DISABLED in configuration"
SIGNING = {
    "CKK_EC": ("CKM_ECDSA",),
    "CKK_RSA": ("CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS", "CKM_RSA_X_509"),
}


def disabled_mechanisms(lines: Iterable[str]) -> list[str]:
    """The mechanisms a SunPKCS11 log marks `DISABLED in configuration`, in order."""
    current: str | None = None
    out: list[str] = []
    for line in lines:
        found = MECHANISM.search(line)
        if found:
            current = found.group(1)
        if DISABLED in line:
            name = found.group(1) if found else current
            if name and name not in out:
                out.append(name)
            current = None
    return out


def disabled_summary(disabled: list[str]) -> tuple[str, str]:
    """(summary, hint) for mechanisms SunPKCS11 was told not to use."""
    raw_off = [m for names in SIGNING.values() for m in names if m in disabled]
    summary = (
        f"Java SunPKCS11 reports {len(disabled)} mechanism(s) DISABLED in configuration: "
        + ", ".join(disabled[:12]) + (" …" if len(disabled) > 12 else "") + "."
        + (
            f" Among them raw signing mechanisms ({', '.join(raw_off)}): with those off, Java "
            "can only sign with the token's combined mechanisms, or not at all for this key type."
            if raw_off
            else " The signature then goes through the mechanisms left enabled."
        )
    )
    hint = (
        "Check disabledMechanisms/enabledMechanisms in the SunPKCS11 configuration: disable the "
        "combined mechanisms (CKM_ECDSA_SHA*, CKM_SHA*_RSA_PKCS*) the token cannot handle, but "
        "keep CKM_ECDSA, CKM_RSA_PKCS and CKM_RSA_PKCS_PSS enabled."
    )
    return summary, hint
