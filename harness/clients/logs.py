"""Pulling the interesting error out of a client's log."""

from __future__ import annotations

import re
from pathlib import Path

_CKR_RE = re.compile(r"\bCKR_[A-Z0-9_]+\b")
_ERROR_RE = re.compile(r"error|fail|unable|cannot|denied", re.IGNORECASE)


def client_error(log_path: Path) -> str | None:
    """The first CKR_ code in the log, else the first line that reads like an error."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    lines = text.splitlines()[1:]  # line 0 is the command line
    for line in lines:
        match = _CKR_RE.search(line)
        if match and match.group(0) != "CKR_OK":
            return match.group(0)
    for line in lines:
        if _ERROR_RE.search(line) and "verify error:num=" not in line:
            return line.strip()[:300]
    return None
