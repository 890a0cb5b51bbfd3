"""One token, one run at a time: an fcntl lock keyed on the token.

Two harness runs on the same named token would see each other's objects and
compete for the card; the lock serialises them (the second waits and says so
once). The lock file lives in the harness's state directory
(~/.cache/p11tls/locks, or $P11TLS_STATE_DIR/locks) and holds the owner's pid
and start time for that one line. flock locks belong to the open file, so a
run that dies for any reason (SIGKILL included) releases its lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path


def state_dir() -> Path:
    """Where the harness keeps locks and journals between runs."""
    override = os.environ.get("P11TLS_STATE_DIR")
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "p11tls"


def token_key(module: Path | str, serial: str, label: str) -> str:
    """A file-name-safe key for one token of one module."""
    digest = hashlib.sha256(f"{Path(module).resolve()}\0{serial}\0{label}".encode())
    safe = "".join(c if c.isalnum() else "_" for c in label)[:24]
    return f"{safe}-{digest.hexdigest()[:16]}"


def private_dir(path: Path) -> Path:
    """`path` created (with parents) and made 0700: it names the user's tokens."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


class TokenLock:
    """An exclusive lock on one token for as long as it is held."""

    def __init__(self, key: str, what: str, directory: Path | None = None) -> None:
        self.path = private_dir(directory or state_dir() / "locks") / f"{key}.lock"
        self.what = what  # "token 'My Card'" for the one line
        self._fd: int | None = None

    def acquire(self, say: Callable[[str], None] | None = None,
                poll_s: float = 0.2) -> None:
        """Block until the lock is ours; say one line if another run holds it.
        Interruptible: the wait is a sleep between tries."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        said = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not said and say is not None:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                        say(f"p11tls: {self.what} is in use by another harness run "
                            f"({holder or 'pid unknown'}); waiting for it to finish")
                        said = True
                    time.sleep(poll_s)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the file releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> TokenLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
