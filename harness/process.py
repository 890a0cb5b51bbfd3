"""Running external programs: argv lists, explicit environment, a timeout,
the whole process group killed on timeout, and one log file per run; and
reading what programs and users wrote (`read_bounded`): never more than asked."""

from __future__ import annotations

import os
import select
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO


@dataclass(frozen=True)
class ProcessResult:
    argv: tuple[str, ...]
    returncode: int | None  # None when killed after the timeout
    timed_out: bool
    duration_s: float
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)


class NotReadable(OSError):
    """read_bounded refused the file (not a regular file, or too large)."""


def open_regular(path: Path | str) -> BinaryIO:
    """A regular file opened for reading; opened non-blocking, so a FIFO never
    hangs the open. NotReadable (an OSError, with strerror for the one line)
    when it is a device, FIFO or directory: those have no size to trust."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    file = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        file.close()
        raise NotReadable(0, "not a regular file (a device, FIFO or directory)")
    return file


def read_bounded(path: Path | str, limit: int) -> bytes:
    """The bytes of a regular file, at most `limit` of them counted as read
    (a file may grow while read); NotReadable when it is not a regular file
    or holds more."""
    with open_regular(path) as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise NotReadable(0, f"larger than {limit} bytes")
    return data


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_for(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to `timeout` seconds for proc to end; True when it did.

    Popen.wait(timeout) polls with sleeps that double up to 50 ms, which adds
    up to ~16 ms to every handshake measured; a pidfd wakes up at the exit.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel), or already reaped
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if ready:
        proc.wait()
    return bool(ready)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, wait briefly, then SIGKILL it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_for(proc, 2):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_logged(
    argv: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    timeout: float,
    stdin_data: bytes = b"",
) -> ProcessResult:
    """Run argv to completion, stdout+stderr into log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        assert proc.stdin is not None
        try:
            try:
                proc.stdin.write(stdin_data)
                proc.stdin.close()  # EOF: the clients end after the handshake
            except BrokenPipeError:
                pass  # it ended before reading: its exit status says why
            timed_out = not wait_for(proc, timeout)
        except BaseException:  # a signal turned into KeyboardInterrupt: no orphan client
            kill_group(proc)
            raise
        if timed_out:
            kill_group(proc)
    return ProcessResult(
        argv=tuple(argv),
        returncode=None if timed_out else proc.returncode,
        timed_out=timed_out,
        duration_s=time.monotonic() - start,
        log_path=log_path,
    )


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a client process: this process's own (a vendor module
    may need its variables, e.g. PKCS11SPY or YUBIHSM_PKCS11_CONF) without the
    variables that would load another OpenSSL configuration, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_VARIABLES}
    env.update(extra or {})
    return env


# OPENSSL_CONF could load another engine/provider section than the harness's.
DROPPED_VARIABLES = frozenset({"OPENSSL_CONF", "PKCS11_MODULE_PATH"})


def tool_version(argv: list[str]) -> str:
    """First line a tool prints about its version, or why there is none."""
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return ((out.stdout or out.stderr).splitlines() or ["unknown"])[0].strip()


# -- signals ----------------------------------------------------------------------------
# SIGTERM and SIGHUP end a run the way Ctrl-C does (KeyboardInterrupt), so the
# same unwinding cleans the token; once the run is ending, further signals are
# held back until the token is clean (a second Ctrl-C must not cut the
# clean-up short).

ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_state: dict[str, Any] = {"installed": False, "interrupted": False, "held": 0, "pending": None,
                          "said": False}


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state["held"] or _state["interrupted"]:
        if _state["pending"] is None:
            _state["pending"] = signum
        if not _state["said"]:
            _state["said"] = True
            os.write(2, b"\np11tls: the run is ending; the token is cleaned up first "
                        b"(further interrupts are held until then)\n")
        return
    _state["interrupted"] = True
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def install_signal_handlers() -> bool:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt once, then are held.
    Only in the main thread (Python's rule); True when installed."""
    if _state["installed"]:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in ENDING_SIGNALS:
        signal.signal(signum, _on_signal)
    _state["installed"] = True
    return True


def interrupted() -> bool:
    """A signal asked this run to end."""
    return bool(_state["interrupted"])


@contextmanager
def signals_held() -> Iterator[None]:
    """Within: ending signals are noted, not acted on (the token clean-up).
    Outside the main thread or without the handlers installed it holds
    nothing; a signal received within is raised as KeyboardInterrupt after,
    unless the run is already ending."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = None
    if not _state["installed"]:
        previous = {s: signal.signal(s, _on_signal) for s in ENDING_SIGNALS}
    _state["held"] += 1
    try:
        yield
    finally:
        _state["held"] -= 1
        if previous is not None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        pending, _state["pending"] = _state["pending"], None
        if pending is not None and not _state["held"] and not _state["interrupted"]:
            _state["interrupted"] = True
            raise KeyboardInterrupt(f"signal {signal.Signals(pending).name}")
