"""One warm JVM running the Java client, its line protocol, and the slot
lookup its SunPKCS11 configuration needs."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote_plus, unquote_plus

from harness.errors import TokenError
from harness.process import kill_group

# -- finding the slot --------------------------------------------------------------

# Run in a child Python: this process may already have SoftHSM (or the
# interposer) loaded through python-pkcs11, and one process must load one
# module path once. The child does what SunPKCS11 does with slotListIndex:
# C_GetSlotList(FALSE), then C_GetTokenInfo per slot.
_SLOT_LOOKUP = r"""
import json, sys
import pkcs11
from pkcs11 import exceptions as e
lib = pkcs11.lib(sys.argv[1])
found, labels = [], []
for index, slot in enumerate(lib.get_slots(token_present=False)):
    try:
        token = slot.get_token()
    except (e.TokenNotPresent, e.TokenNotRecognised, e.DeviceRemoved):
        continue
    labels.append(token.label)
    if token.label == sys.argv[2]:
        found.append({"slot": slot.slot_id, "index": index})
print(json.dumps({"found": found, "labels": labels}))
"""


@dataclass(frozen=True)
class SlotRef:
    slot_id: int
    index: int  # position in C_GetSlotList(FALSE)

    @property
    def config_line(self) -> str:
        # SunPKCS11 parses `slot` as a Java int; slotListIndex covers larger ids.
        if 0 <= self.slot_id <= 0x7FFFFFFF:
            return f"slot = {self.slot_id}"
        return f"slotListIndex = {self.index}"


def find_slot(module: Path, token_label: str, env: dict[str, str], timeout: float = 60) -> SlotRef:
    """The slot holding the token labelled `token_label` (in a child process)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _SLOT_LOOKUP, str(module), token_label],
            env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        raise TokenError(f"listing the slots of {module} took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TokenError(f"cannot list the slots of {module}: {last}")
    data = json.loads(proc.stdout)
    if not data["found"]:
        present = ", ".join(map(repr, data["labels"])) or "none"
        raise TokenError(f"no token labelled {token_label!r} in {module}; tokens present: "
                         f"{present} (check --p11-token-label)")
    if len(data["found"]) > 1:
        raise TokenError(f"more than one token labelled {token_label!r} in {module}: "
                         "the harness needs a unique label")
    return SlotRef(int(data["found"][0]["slot"]), int(data["found"][0]["index"]))


# -- the line protocol --------------------------------------------------------------


def encode_request(verb: str, **fields: object) -> str:
    """One request line: verb, then key=value with URL-encoded values."""
    return " ".join([verb, *(f"{k}={quote_plus(str(v))}" for k, v in fields.items())])


def decode_answer(line: str) -> tuple[str, dict[str, str]]:
    words = line.strip().split(" ")
    pairs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    return words[0], {k: unquote_plus(v) for k, v in pairs.items()}


# -- one warm JVM ------------------------------------------------------------------------


_VERBS = {b"ready", b"fatal", b"ok", b"fail"}  # first words of the JVM's protocol lines


class JVMDied(Exception):
    pass


class NoAnswer(Exception):
    pass


class WarmJVM:
    """One running P11TlsClient process and its line protocol."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path,
                 config_dir: Path) -> None:
        self.log_path = log_path
        self.config_dir = config_dir
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                start_new_session=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        with open(self.log_path, "ab") as log:
            for raw in stream:
                if raw.split(b" ", 1)[0].strip() in _VERBS:
                    self._lines.put(raw.decode(errors="replace"))
                else:
                    # HotSpot prints its crash banner to stdout whatever the options
                    log.write(raw)
                    log.flush()
        self._lines.put(None)

    def drain(self, timeout: float) -> None:
        """Wait until everything the JVM wrote to stdout has been read."""
        self._reader.join(timeout)

    def output_since(self, offset: int) -> str:
        """What the JVM wrote to its own log after `offset` (stderr, crash banner)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def receive(self, timeout: float) -> tuple[str, dict[str, str]]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise NoAnswer from None
        if line is None:
            self._lines.put(None)  # stays dead for any later call
            raise JVMDied
        return decode_answer(line)

    def ask(self, request: str, timeout: float) -> tuple[str, dict[str, str]]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(request.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise JVMDied from None
        return self.receive(timeout)

    def exit_status(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def stop(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # EOF: the JVM ends on its own
            except OSError:
                pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.config_dir, ignore_errors=True)


