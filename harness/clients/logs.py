"""Pulling the interesting error out of a client's log."""

from __future__ import annotations

import re
from pathlib import Path

_CKR_RE = re.compile(r"\bCKR_[A-Z0-9_]+\b")
_ERROR_RE = re.compile(r"error|fail|unable|cannot|denied", re.IGNORECASE)
# 80EB...:error:0A000418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca:file.c:1601:...
_OPENSSL_ERROR_RE = re.compile(r"^[0-9A-F]+:error:[0-9A-F]+:[^:]*:[^:]*:(.*?):[^:]*\.c:\d+")


def short_openssl_error(line: str) -> str:
    """The reason part of an OpenSSL error-queue line; other lines unchanged."""
    match = _OPENSSL_ERROR_RE.match(line.strip())
    return match.group(1) if match else line.strip()


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
            return short_openssl_error(line)[:300]
    return None
