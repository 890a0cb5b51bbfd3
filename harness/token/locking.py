"""One token, one run at a time: an fcntl lock keyed on the token itself.

Two harness runs on the same token would see each other's objects and
compete for the card; the lock serialises them (the second waits and says so
once). The key is what identifies the token (manufacturer, model, serial,
label), not the module path: through p11-kit-proxy.so, a copy of the module
or another user's configuration it is still the same token.

Locks and journals live in one state directory every user and process of the
host sees: $P11TLS_STATE_DIR, else /var/lib/p11tls (made 1777 like /tmp:
every user may add files, none may remove another's), else the user's
~/.cache/p11tls with a warning (other users' runs then do not see this
one's). The lock file holds the owner's pid and start time for that one line.
flock locks belong to the open file, so a run that dies for any reason
(SIGKILL included) releases its lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

SYSTEM_STATE_DIR = Path("/var/lib/p11tls")
IDENTITY = ("manufacturer", "model", "serial", "token_label")  # CK_TOKEN_INFO's own words
_warned: list[bool] = []


def state_dir() -> Path:
    """Where the harness keeps locks and journals between runs."""
    override = os.environ.get("P11TLS_STATE_DIR")
    if override:
        return Path(override)
    try:
        if not SYSTEM_STATE_DIR.is_dir():
            SYSTEM_STATE_DIR.mkdir(mode=0o1777)
            os.chmod(SYSTEM_STATE_DIR, 0o1777)  # past the umask
        if os.access(SYSTEM_STATE_DIR, os.W_OK | os.X_OK):
            return SYSTEM_STATE_DIR
    except OSError:
        pass
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    if not _warned:
        _warned.append(True)
        print(f"p11tls: warning: {SYSTEM_STATE_DIR} is not writable, so locks and journals "
              f"go to {cache}/p11tls, which other users' runs do not see; make "
              f"{SYSTEM_STATE_DIR} (mode 1777) or set P11TLS_STATE_DIR", file=sys.stderr)
    return Path(cache) / "p11tls"


def token_key(identity: Mapping[str, Any]) -> str:
    """A file-name-safe key for one token: its CK_TOKEN_INFO identity
    (`TokenInfo.as_dict()` or `Token.identity`), whatever module reaches it."""
    fields = [str(identity.get(name, "")).strip() for name in IDENTITY]
    digest = hashlib.sha256("\0".join(fields).encode())
    safe = "".join(c if c.isalnum() else "_" for c in fields[-1])[:24]
    return f"{safe}-{digest.hexdigest()[:16]}"


def shared_dir(path: Path) -> Path:
    """`path` created (with parents); under a shared state directory it stays
    usable by every user (1777), under a user's own it is 0700."""
    path.mkdir(parents=True, exist_ok=True)
    shared = path.resolve().is_relative_to(SYSTEM_STATE_DIR)
    try:
        os.chmod(path, 0o1777 if shared else 0o700)
    except PermissionError:
        pass  # another user's directory: its mode is theirs
    return path


class TokenLock:
    """An exclusive lock on one token for as long as it is held."""

    def __init__(self, key: str, what: str, directory: Path | None = None) -> None:
        self.path = shared_dir(directory or state_dir() / "locks") / f"{key}.lock"
        self.what = what  # "token 'My Card'" for the one line
        self._fd: int | None = None

    def _open(self) -> int:
        # 0644: another user's run can open it to take the lock (flock needs no write)
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            return os.open(self.path, os.O_RDONLY)

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it."""
        try:
            return self.path.read_bytes()[:200].decode(errors="replace").strip()
        except OSError:
            return ""

    def acquire(self, say: Callable[[str], None] | None = None,
                poll_s: float = 0.2, wait: bool = True, shared: bool = False,
                within_s: float | None = None) -> bool:
        """Block until the lock is ours (say one line if another run holds it),
        or with wait=False return False at once, or after `within_s` seconds;
        `shared` with other shared holders. Interruptible: the wait is a sleep
        between tries."""
        fd = self._open()
        said = False
        deadline = None if within_s is None else time.monotonic() + within_s
        try:
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait or (deadline is not None and time.monotonic() > deadline):
                        os.close(fd)
                        return False
                    if not said and say is not None:
                        say(f"p11tls: {self.what} is in use by another harness run "
                            f"({self.holder() or 'pid unknown'}); waiting for it to finish")
                        said = True
                    time.sleep(poll_s)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if shared:
            return True
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename} since "
                          f"{time.strftime('%H:%M:%S')}".encode(), 0)
        except OSError:
            pass  # another user's lock file: held all the same
        return True

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
