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


@contextlib.contextmanager
def pin_once(pin: str, prefix: str = "p11tls-pin-") -> Iterator[Path]:
    """The path of a FIFO that reads as `pin` once, then as empty; removed after."""
    with tempfile.TemporaryDirectory(prefix=prefix) as private:
        path = Path(private) / "pin"
        os.mkfifo(path, 0o600)
        done = threading.Event()
        reads: list[int] = []

        def serve() -> None:
            while not done.is_set():
                fd = os.open(path, os.O_WRONLY)  # blocks until a reader opens
                try:
                    if not reads and not done.is_set():
                        os.write(fd, (pin + "\n").encode())
                    reads.append(1)
                except BrokenPipeError:
                    pass
                finally:
                    os.close(fd)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield path
        finally:
            done.set()
            # unblock the writer's open(): a reader that reads nothing
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                thread.join(1.0)
                os.close(fd)
            thread.join(1.0)
