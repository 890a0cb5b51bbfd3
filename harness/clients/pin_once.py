"""A PIN file that gives the PIN to its first reader only.

NSS asks for the PIN once per authentication attempt, and with a wrong PIN
tstclnt makes several (measured: 6 C_Login calls in one run with NSS 3.87),
enough to lock a card. A named pipe fed by a thread answers the first open
with the PIN and every later one with an empty read, which NSS takes as
"no PIN": one wrong C_Login at most. The pipe lives in a private 0700
directory; the PIN is never written to a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

POLL_S = 0.01  # how soon a waiting reader gets the PIN, and Ctrl-C ends the thread


@contextlib.contextmanager
def pin_once(pin: str, prefix: str = "p11tls-pin-") -> Iterator[Path]:
    """The path of a FIFO that reads as `pin` once, then as empty; removed after."""
    with tempfile.TemporaryDirectory(prefix=prefix) as private:
        path = Path(private) / "pin"
        os.mkfifo(path, 0o600)
        done = threading.Event()
        reads: list[int] = []

        def serve() -> None:
            # Never blocked in open(): a non-blocking open fails (ENXIO) until a
            # reader has the FIFO open, so the thread sees `done` (or the FIFO
            # gone with its directory, after Ctrl-C) within one poll.
            while not done.is_set():
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # no reader yet (ENXIO), or removed: look again
                    done.wait(POLL_S)
                    continue
                try:
                    if not reads and not done.is_set():
                        os.write(fd, (pin + "\n").encode())
                    reads.append(1)
                except OSError:  # the reader went away first
                    pass
                finally:
                    os.close(fd)
                # until this reader closes, a new open would find it again
                while not done.is_set() and _reader_open(path):
                    done.wait(POLL_S)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield path
        finally:
            done.set()
            thread.join(1.0)  # within one poll; a daemon thread either way


def _reader_open(path: Path) -> bool:
    """A reader still has the FIFO open (a write-only open succeeds)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True
