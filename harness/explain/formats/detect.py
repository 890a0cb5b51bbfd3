"""Reading a log file and telling which format it is in.

People paste logs into issues with prose around them (both seeds do), so the
format is the one whose distinctive lines are most frequent, not the one the
first line happens to match.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import BinaryIO

from harness.errors import ConfigError
from harness.explain.formats import (
    interposer_records as records,
)
from harness.explain.formats import (
    nss_log,
    opensc,
    pkcs11_logger,
    tpm2_log,
)
from harness.explain.model import LogFormat
from harness.process import open_regular

MAX_LOG_BYTES = 1 << 30  # OpenSC debug logs of a long run are hundreds of MB

FORMAT_NAMES = (
    "pkcs11-spy, p11-kit log-calls, pkcs11-logger, OpenSC debug, tpm2-pkcs11, NSS module "
    "debug or p11tls record"
)
SAMPLE_LINES = 5000  # enough to recognise any of the formats
SNIFF_BYTES = 65536  # judged before more is read
BINARY_MAGIC = (b"\x7fELF", b"\x1f\x8b", b"PK\x03\x04", b"%PDF", b"\x89PNG", b"MZ")

SPY_HEADER = re.compile(r"^\d+: C_\w+\s*$")
SPY_DETAIL = re.compile(r"^(\[(in|out)\] |Returned:\s+-?\d+ |pMechanism->type=)")
P11KIT_START = re.compile(r"^C_\w+\s*$")
P11KIT_DETAIL = re.compile(r"^(\s*(IN|OUT): \w+ = |C_\w+ = CKR_\w+\s*$)")
LOGGER_LINE = re.compile(r"^(Calling C_\w+|Returning \d+ \(\w+\))\s*$")


def read_log(path: Path) -> list[str]:
    """The lines of a log file (`-`: standard input), or a ConfigError that says
    in one line why not."""
    return read_log_window(path)[0]


def read_log_window(path: Path) -> tuple[list[str], str | None]:
    """The lines to explain, and a note when a large log was read in a window.

    The first 64 KiB are judged before anything more is read, so /dev/zero or
    a binary is refused at once. A log larger than WINDOW_START is scanned in
    blocks (memory stays bounded) for its first failing return value, and
    only the lines around it are kept: the note says which.
    """
    try:
        # "-": a log pasted on standard input
        with (open(sys.stdin.fileno(), "rb", closefd=False) if str(path) == "-"
              else open_regular(path)) as stream:
            data = stream.read(SNIFF_BYTES)
            if data and looks_binary(data):
                raise ConfigError(f"{path} is a binary file, not a text log: expected a "
                                  f"{FORMAT_NAMES} log")
            data, note = _window(stream, data)
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
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), note


WINDOW_START = 16_000_000  # logs up to this size are read whole
BEFORE = 3_000_000  # bytes kept before the first failure of a larger log
AFTER = 1_000_000  # and after it
BLOCK = 8_000_000
MAX_BYTES = 20_000_000_000  # scanned at most (a log, not a disk image)
# A failing return value in any format's spelling; codes that are part of
# normal operation (probes, length queries) do not count.
CANDIDATE = re.compile(rb"CKR_(?!OK\b)")  # fast (a literal prefix); FAILURE then decides
FAILURE = re.compile(
    rb"\bCKR_(?!OK\b|ATTRIBUTE_TYPE_INVALID\b|BUFFER_TOO_SMALL\b|USER_ALREADY_LOGGED_IN\b|"
    rb"CRYPTOKI_ALREADY_INITIALIZED\b|CRYPTOKI_NOT_INITIALIZED\b|MECHANISM_INVALID\b|"
    rb"FUNCTION_NOT_SUPPORTED\b|NO_EVENT\b|TOKEN_NOT_PRESENT\b|USER_NOT_LOGGED_IN\b)[A-Z0-9_]+"
)


def _window(stream: BinaryIO, head: bytes) -> tuple[bytes, str | None]:
    more = stream.read(WINDOW_START + 1 - len(head))
    data = head + more
    if len(data) <= WINDOW_START:
        return data, None
    offset = 0  # where `data` starts in the file
    lines_before = 0
    while True:
        found = _first_failure(data)
        if found:
            start = max(0, found.start() - BEFORE)
            start = data.find(b"\n", start) + 1 if start else 0  # from a line start
            window = data[start:] + stream.read(max(0, found.start() + AFTER - len(data)))
            end = window.rfind(b"\n", 0, found.start() - start + AFTER)
            lines_before += data.count(b"\n", 0, start)
            where = f"its first failing return value (byte {offset + found.start()})"
            return window[: end if end > 0 else None], _note(lines_before, where)
        keep = data[-BEFORE:]
        cut = keep.find(b"\n") + 1
        keep = keep[cut:]
        lines_before += data.count(b"\n", 0, len(data) - len(keep))
        offset += len(data) - len(keep)
        if offset > MAX_BYTES:
            raise ConfigError(f"no failing return value in its first {MAX_BYTES // 10**9} GB: "
                              "cut the log to the part around the failure")
        block = stream.read(BLOCK)
        if not block:  # no failure anywhere: the end, where a cut or hung log shows it
            return keep, _note(lines_before, "its end (no failing return value in it)")
        data = keep + block


def _first_failure(data: bytes) -> re.Match[bytes] | None:
    at = 0
    while True:
        candidate = CANDIDATE.search(data, at)
        if candidate is None:
            return None
        found = FAILURE.match(data, candidate.start())
        if found is not None and (candidate.start() == 0 or not (
                data[candidate.start() - 1:candidate.start()].isalnum()
                or data[candidate.start() - 1:candidate.start()] == b"_")):
            return found
        at = candidate.end()


def _note(skipped: int, where: str) -> str:
    return (f"a large log: read the part around {where}; the {skipped} lines before it were "
            "scanned, not explained (cut the log there to explain another part)")


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
