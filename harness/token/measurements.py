"""What `p11tls token-sweep` measured on a token, kept for doctor and the matrix.

A token does not advertise how much input a combined mechanism takes, nor
whether it imports private keys: the sweep measures both, and this file
keeps the result in the run state directory (harness.token.locking.state_dir,
$P11TLS_STATE_DIR), one JSON file per token serial and firmware. It is used
only for a token that still says the same model and manufacturer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.token.locking import shared_dir, state_dir


@dataclass(frozen=True)
class Measurement:
    """One token's measured limits: per combined mechanism the largest input
    accepted / smallest refused and the CKR of the refusal; per key type
    (CKK_EC, CKK_RSA) what a private-key import returned ("CKR_OK" or the CKR)."""

    serial: str
    firmware: str
    model: str = ""
    manufacturer: str = ""
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    imports: dict[str, str] = field(default_factory=dict)

    def matches(self, info: Mapping[str, Any]) -> bool:
        return (str(info.get("model") or ""), str(info.get("manufacturer") or "")) == (
            self.model, self.manufacturer)


def measurement_path(serial: str, firmware: str) -> Path:
    digest = hashlib.sha256(f"{serial}\0{firmware}".encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() else "_" for c in serial)[:24]
    return state_dir() / "measured" / f"{safe}-{digest}.json"


def save_measurement(found: Measurement) -> Path:
    """Write (replace) the token's measurement atomically; return its path."""
    path = measurement_path(found.serial, found.firmware)
    shared_dir(path.parent)  # every user's runs read and replace it
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(found), indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def load_measurement(info: Mapping[str, Any]) -> Measurement | None:
    """The measurement of the token `info` describes (TokenInfo.as_dict() or
    doctor's entry: serial, firmware, model, manufacturer), if any and if it
    is still the same token; an unreadable file counts as none."""
    path = measurement_path(str(info.get("serial") or ""), str(info.get("firmware") or ""))
    try:
        data = json.loads(path.read_text())
        found = Measurement(**{k: data[k] for k in ("serial", "firmware", "model",
                                                    "manufacturer", "limits", "imports")})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if found.matches(info) else None
