"""Reading a log file and telling which format it is in.

People paste logs into issues with prose around them (both seeds do), so the
format is the one whose distinctive lines are most frequent, not the one the
first line happens to match.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from harness.errors import ConfigError
from harness.process import NotReadable, read_bounded
from harness.explain.formats import (
    nss_log,
    opensc,
    pkcs11_logger,
    interposer_records as records,
    tpm2_log,
)
from harness.explain.model import LogFormat

MAX_LOG_BYTES = 1 << 30  # OpenSC debug logs of a long run are hundreds of MB

FORMAT_NAMES = (
    "pkcs11-spy, p11-kit log-calls, pkcs11-logger, OpenSC debug, tpm2-pkcs11, NSS module "
    "debug or p11tls record"
)
SAMPLE_LINES = 5000  # enough to recognise any of the formats
BINARY_MAGIC = (b"\x7fELF", b"\x1f\x8b", b"PK\x03\x04", b"%PDF", b"\x89PNG", b"MZ")

SPY_HEADER = re.compile(r"^\d+: C_\w+\s*$")
SPY_DETAIL = re.compile(r"^(\[(in|out)\] |Returned:\s+-?\d+ |pMechanism->type=)")
P11KIT_START = re.compile(r"^C_\w+\s*$")
P11KIT_DETAIL = re.compile(r"^(\s*(IN|OUT): \w+ = |C_\w+ = CKR_\w+\s*$)")
LOGGER_LINE = re.compile(r"^(Calling C_\w+|Returning \d+ \(\w+\))\s*$")


def read_log(path: Path) -> list[str]:
    """The lines of a log file (`-`: standard input), or a ConfigError that says
    in one line why not."""
    try:
        # "-": a log pasted on standard input
        data = (sys.stdin.buffer.read(MAX_LOG_BYTES + 1) if str(path) == "-"
                else read_bounded(path, MAX_LOG_BYTES))
        if len(data) > MAX_LOG_BYTES:
            raise NotReadable(0, f"larger than {MAX_LOG_BYTES} bytes")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file: pass the path of a PKCS#11 call log") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory: pass the path of a PKCS#11 call log") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise ConfigError(f"{path} is empty: expected a {FORMAT_NAMES} log")
    if looks_binary(data):
        raise ConfigError(f"{path} is a binary file, not a text log: expected a {FORMAT_NAMES} log")
    text = data.decode("utf-8", errors="replace").replace("\x00", "")
    # Windows line ends (logs from Windows hosts) and old Mac ones
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def looks_binary(data: bytes) -> bool:
    """True for executables, archives, images and other non-text files.

    A few stray control bytes are tolerated: p11-kit 0.24 prints CK_TOKEN_INFO's
    utcTime field raw, NULs included.
    """
    if data.startswith(BINARY_MAGIC):
        return True
    sample = data[:65536]
    control = sum(1 for b in sample if b < 0x20 and b not in (0x09, 0x0A, 0x0C, 0x0D))
    if control > len(sample) * 0.05:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a cut multi-byte character at the end of the sample is not binary
        if exc.start < len(sample) - 4:
            undecodable = sum(1 for b in sample if b >= 0x80)
            return undecodable > len(sample) * 0.3
    return False


def scores(lines: list[str]) -> dict[LogFormat, int]:
    """How many lines look distinctive of each format."""
    found = dict.fromkeys(LogFormat, 0)
    for line in lines[:SAMPLE_LINES]:
        if not line.strip():
            continue
        if SPY_HEADER.match(line) or SPY_DETAIL.match(line):
            found[LogFormat.PKCS11_SPY] += 1
        elif P11KIT_DETAIL.match(line):
            found[LogFormat.P11_KIT] += 1
        elif P11KIT_START.match(line):
            found[LogFormat.P11_KIT] += 0  # a bare function name alone proves nothing
        if LOGGER_LINE.match(pkcs11_logger.strip_prefix(line)):
            found[LogFormat.PKCS11_LOGGER] += 3  # one per call, while others see many
        if opensc.match(line):
            found[LogFormat.OPENSC_DEBUG] += 1
        if records.looks_like_record(line):
            found[LogFormat.HARNESS] += 3
        if tpm2_log.looks_like(line):
            found[LogFormat.TPM2_PKCS11] += 2  # `… on line: "N" in file: "…"` is its own
        if nss_log.looks_like(line):
            found[LogFormat.NSS_DEBUG] += 1
    return found


def detect_format(lines: list[str]) -> LogFormat | None:
    """The most likely format of a log, or None if no line looks like any."""
    found = scores(lines)
    best = max(found, key=lambda fmt: found[fmt])
    return best if found[best] >= 2 else None
