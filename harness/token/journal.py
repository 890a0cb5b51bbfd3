"""What a run is about to create on a named token, written down before it
creates it, so a run that dies (SIGKILL, power cut) leaves a trace the next
run can find and `p11tls cleanup` can act on.

One file per run under <state dir>/journal/<token key>/<run tag>.jsonl (see
locking.py: keyed by the token's identity, in a directory every user sees;
mode 0644 so every user's run can tell it is alive): a header line (host,
pid, module, token label and serial) and one line per key (label, CKA_ID):
never a PIN or key material. The run holds an flock on its file while it is
alive, so on this host a file nobody holds is a run that ended; a run on
another host (a state directory shared over the network) is alive while it
touches its file (a heartbeat every HEARTBEAT_S). A run that cleaned up
deletes its file; one whose call never returned writes so before it exits.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pkcs11 import Attribute

from harness.errors import TokenError
from harness.token.locking import shared_dir, state_dir, token_key

LABEL_PREFIX = "p11tls-"


LAB_PREFIX = "p11tls-lab-"  # `p11tls provision`: provisioned once, removed with --remove
HEARTBEAT_S = 30.0
STALE_S = 4 * HEARTBEAT_S  # another host's journal untouched this long: its run ended


def journal_dir(identity: dict[str, Any] | str) -> Path:
    """One token's journals: by its identity (see locking.token_key) or that key."""
    key = identity if isinstance(identity, str) else token_key(identity)
    return state_dir() / "journal" / key


def run_tag_of(label: str) -> str | None:
    """`p11tls-1a2b3c-p256-generate` -> `1a2b3c`."""
    if not label.startswith(LABEL_PREFIX) or label.startswith(LAB_PREFIX):
        return None  # lab keys (`p11tls provision`) stay on purpose: no run's leftovers
    return label[len(LABEL_PREFIX):].split("-", 1)[0] or None


class Journal:
    """This run's journal on one token; held (flock) until closed."""

    def __init__(self, directory: Path, run_tag: str, header: dict[str, Any]) -> None:
        self.directory = shared_dir(directory)
        self.path = directory / f"{run_tag}.jsonl"
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # alive: not a leftover for anyone else
        self._write({"run": run_tag, "pid": os.getpid(), "host": platform.node(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **header})
        self._beating = threading.Event()
        threading.Thread(target=self._heartbeat, name="p11tls-journal", daemon=True).start()

    def _heartbeat(self) -> None:
        """Touch the file while alive: how another host sees that this run is."""
        while not self._beating.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def _write(self, entry: dict[str, Any]) -> None:
        assert self._fd is not None
        os.write(self._fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
        os.fsync(self._fd)  # on disk before the token gets the object

    def intend(self, label: str, id_hex: str) -> None:
        """Before creating objects with this label and CKA_ID."""
        self._write({"label": label, "id": id_hex})

    def abandoned(self, call: str) -> None:
        """A call of this run never returned: the process exits without
        C_Finalize; what it made is listed here for `p11tls cleanup`."""
        if self._fd is not None:
            self._write({"abandoned": call, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def close(self, clean: bool) -> None:
        """Done with the token: `clean` deletes the journal (nothing is left)."""
        if self._fd is None:
            return
        self._beating.set()
        if clean:
            self.path.unlink(missing_ok=True)
            try:
                self.directory.rmdir()  # only when no other run's journal is there
            except OSError:
                pass
        os.close(self._fd)
        self._fd = None


@dataclass
class EarlierRun:
    """The journal of a run that is no longer alive."""

    path: Path
    header: dict[str, Any]
    entries: list[tuple[str, str]] = field(default_factory=list)  # (label, CKA_ID hex)

    @property
    def tag(self) -> str:
        return str(self.header.get("run") or self.path.stem)


def _alive(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def scan_journals(directory: Path) -> tuple[list[EarlierRun], set[str]]:
    """(journals of ended runs, tags of live runs) in one token's directory."""
    ended: list[EarlierRun] = []
    live: set[str] = set()
    if not directory.is_dir():
        return ended, live
    for path in sorted(directory.glob("*.jsonl")):
        try:
            if _alive(path):
                live.add(path.stem)
                continue
            with open(path, "rb") as file:  # a journal is small; a huge one is not ours
                lines = file.read(1 << 20).decode(errors="replace").splitlines()
            mtime = path.stat().st_mtime
        except OSError:
            live.add(path.stem)  # unreadable: never take its run's objects for leftovers
            continue
        run = EarlierRun(path, {})
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by the crash
            if not isinstance(entry, dict):
                continue
            if "run" in entry:
                run.header = entry
            elif isinstance(entry.get("label"), str) and isinstance(entry.get("id"), str):
                run.entries.append((entry["label"], entry["id"]))
        if (run.header.get("host") not in (None, platform.node())
                and time.time() - mtime < STALE_S):
            live.add(run.tag)  # another host's run, still beating
            continue
        ended.append(run)
    return ended, live


@dataclass(frozen=True)
class LeftObject:
    label: str
    id_hex: str
    cls: str
    handle: Any = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        return f"{self.label} (CKA_ID {self.id_hex or '-'}, {self.cls})"


def describe_object(obj: Any) -> LeftObject:
    def attr(name: Attribute) -> Any:
        try:
            return obj[name]
        except Exception:  # noqa: BLE001 - a token may refuse to say
            return None

    label = attr(Attribute.LABEL)
    key_id = attr(Attribute.ID)
    cls = getattr(obj, "object_class", None)
    return LeftObject(label if isinstance(label, str) else "",
                      key_id.hex() if isinstance(key_id, bytes) else "",
                      f"CKO_{cls.name}" if cls is not None else "CKO_?", obj)


def harness_objects(objects: Iterable[Any], runs: list[EarlierRun],
                    live: set[str], own: str | None = None) -> list[LeftObject]:
    """The objects earlier runs left: a `p11tls-` label of a run that is not
    alive (and not this one), or a label and CKA_ID an ended run's journal names."""
    journaled = {(label, key_id) for run in runs for label, key_id in run.entries}
    found = []
    for obj in objects:
        item = describe_object(obj)
        tag = run_tag_of(item.label)
        if tag is None or tag in live or tag == own:
            continue
        if (item.label, item.id_hex) in journaled or tag is not None:
            found.append(item)
    return found


def leftovers_line(what: str, objects: list[LeftObject], runs: list[EarlierRun],
                   cleanup_hint: str) -> str | None:
    """One line about an earlier run's leftovers, or None when there are none."""
    if not objects and not runs:
        return None
    tags = sorted({run_tag_of(o.label) or "?" for o in objects} | {r.tag for r in runs})
    return (f"p11tls: {what} holds {len(objects)} object{'s' * (len(objects) != 1)} left by "
            f"earlier runs ({', '.join(tags[:6])}{', ...' if len(tags) > 6 else ''}; "
            f"{len(runs)} journal{'s' * (len(runs) != 1)}): {cleanup_hint}")


class CleanupError(TokenError):
    """Objects the harness made could not be removed: every one is named."""

    def __init__(self, what: str, left: list[LeftObject], why: str) -> None:
        names = "; ".join(o.describe() for o in left)
        super().__init__(f"clean-up of {what} failed ({why}): {len(left)} object"
                         f"{'s' * (len(left) != 1)} left: {names}; remove them with "
                         "`p11tls cleanup` (the journal keeps them)")
        self.left = left
