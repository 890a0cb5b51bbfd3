"""Putting the recording interposer (and optionally pkcs11-spy) between each
client and the real module, and cutting its record into one file per case.

Each client gets one record file for the whole run: a warm JVM reads the
interposer's configuration once, so per-case files are cut from it by
offset before and after each handshake.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ToolMissing
from harness.explain.masking import mask_bytes, mask_lines
from harness.explain.model import LogFormat
from harness.installed import PKCS11_SPY, find_library
from harness.interposer import build_interposer, write_interposer_config
from harness.interposer.calls import parse_calls, read_from, size_of

# The harness's own calls that make a case's key on the token.
PROVISIONING_FUNCTIONS = ("C_CreateObject", "C_GenerateKeyPair")


def provisioned_by(chunk: bytes | None) -> list[dict[str, Any]] | None:
    """The provisioning calls in the harness's own record of one key (the runner
    records this process's calls through the interposer, with or without a
    profile): each {"fn", "rv"}, so an import shows its C_CreateObject and code."""
    if chunk is None:
        return None
    return [{"fn": c.get("fn"), "rv": c.get("rv")} for c in parse_calls(chunk)
            if c.get("fn") in PROVISIONING_FUNCTIONS]


def find_pkcs11_spy() -> Path:
    spy = find_library(*PKCS11_SPY)
    if spy is None:
        raise ToolMissing("pkcs11-spy.so not found: install opensc, or run without --p11-spy")
    return spy


@dataclass(frozen=True)
class Mark:
    record_offset: int
    spy_offset: int


class CallRecorder:
    """The interposer set-up of one client for one run."""

    def __init__(self, real_module: Path, workdir: Path, name: str, *, spy: bool = False,
                 extra_lines: tuple[str, ...] = ()) -> None:
        self.module = build_interposer()
        workdir.mkdir(parents=True, exist_ok=True)
        self.record_file = workdir / f"calls-{name}.jsonl"
        self.spy_log = workdir / f"spy-{name}.log" if spy else None
        below = find_pkcs11_spy() if spy else real_module
        self.env = write_interposer_config(
            below, self.record_file, workdir / f"interposer-{name}.conf", list(extra_lines))
        if self.spy_log is not None:
            # pkcs11-spy appends with fopen(): the file made here keeps mode 0600
            os.close(os.open(self.spy_log, os.O_WRONLY | os.O_CREAT, 0o600))
            self.spy_log.chmod(0o600)
            self.env.update({"PKCS11SPY": str(real_module), "PKCS11SPY_OUTPUT": str(self.spy_log)})

    def mark(self) -> Mark:
        return Mark(size_of(self.record_file), size_of(self.spy_log))

    def collect(self, since: Mark, case_dir: Path) -> list[dict[str, Any]]:
        """The calls made since `since`; also kept as case_dir/calls.jsonl (and
        spy.log, with PINs and key values masked: it is meant for bug reports)."""
        case_dir.mkdir(parents=True, exist_ok=True)
        chunk = read_from(self.record_file, since.record_offset)
        (case_dir / "calls.jsonl").write_bytes(chunk)
        if self.spy_log is not None:
            scrub_spy_log(self.spy_log, since.spy_offset)
            spy = read_from(self.spy_log, since.spy_offset).decode(errors="replace")
            masked = mask_lines(spy.splitlines(), LogFormat.PKCS11_SPY)
            (case_dir / "spy.log").write_text("\n".join(masked) + "\n" if masked else "")
        return parse_calls(chunk)

    def scrub(self) -> None:
        """Mask the whole raw spy log (for what was written outside any case)."""
        if self.spy_log is not None:
            scrub_spy_log(self.spy_log, 0)


def scrub_spy_log(path: Path, offset: int) -> None:
    """Mask PINs and key values in a raw pkcs11-spy log from `offset` on, in
    place and keeping every length: clients that still append to it (a warm
    JVM) and the offsets marks hold stay valid."""
    try:
        with open(path, "r+b") as handle:
            handle.seek(offset)
            raw = handle.read()
            masked = mask_spy_bytes(raw)
            if masked != raw:
                handle.seek(offset)
                handle.write(masked)
    except FileNotFoundError:
        return


def mask_spy_bytes(raw: bytes) -> bytes:
    """A same-length mask of pkcs11-spy output: the lines explain's masker
    changes become '*' (pPin dumps, secret attribute values), and any known
    PIN in any form (harness.explain.masking) as well."""
    text = raw.decode("latin-1")  # one char per byte: lengths stay put
    lines = text.split("\n")
    masked = mask_lines(lines, LogFormat.PKCS11_SPY)
    out = []
    for line, new in zip(lines, masked):
        if new != line:
            body = line.lstrip()
            line = line[: len(line) - len(body)] + re.sub(r"\S", "*", body)
        out.append(line)
    return mask_bytes("\n".join(out).encode("latin-1"))
