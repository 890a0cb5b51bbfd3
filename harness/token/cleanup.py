"""Leftovers of earlier runs on a named token: finding them (one line at the
start of a run) and `p11tls cleanup`, which lists them and deletes them only
with --yes. An object is a leftover when its label is `p11tls-<run>-…` of a
run that is not alive, or an ended run's journal names its label and CKA_ID;
objects of a live run (its journal is locked) are never touched.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pkcs11 import exceptions as p11exc
from pkcs11._pkcs11 import SearchIter  # type: ignore[attr-defined]  # not in its stub

from harness.errors import HarnessError
from harness.pkcs11 import exception_return_code
from harness.token.journal import (
    CleanupError,
    EarlierRun,
    LeftObject,
    harness_objects,
    journal_dir,
    leftovers_line,
    scan_journals,
)
from harness.token.session import Token


def cleanup_hint(module: Path | str, label: str) -> str:
    return (f"`p11tls cleanup --p11-module {module} --p11-token-label '{label}' --p11-pin …` "
            "lists them, with --yes deletes them")


def ckr_of(exc: BaseException) -> str:
    """The CKR_ name users know, never python-pkcs11's class name."""
    return exception_return_code(exc) or "CKR_GENERAL_ERROR"


def readable_objects(session: Any) -> tuple[list[Any], list[str]]:
    """Every object the session sees, and one line per object the token cannot
    describe (a corrupt or half-written object: C_GetAttributeValue fails), so
    one such object never hides the others. One object per C_FindObjects:
    python-pkcs11 gives up the rest of a batch at the first it cannot read."""
    objects: list[Any] = []
    unreadable: list[str] = []
    with SearchIter(session, {}, 1) as search:
        for batch in search:
            try:
                objects.extend(batch)
            except p11exc.PKCS11Error as exc:
                unreadable.append(
                    f"object #{len(objects) + len(unreadable) + 1} of the token cannot be "
                    f"read (C_GetAttributeValue -> {ckr_of(exc)}): left as it is; "
                    "if it is a half-written object of the harness, the token's own "
                    "tool can delete it")
    return objects, unreadable


def find_leftovers(token: Token, key: str, session: object,
                   own: str | None = None,
                   session_id: str | None = None) -> tuple[list[LeftObject], list[EarlierRun]]:
    """(objects, journals) of ended runs on the token (`key`: its journals'
    token key); `session_id` narrows it to the runs of one pytest session
    (its xdist workers)."""
    runs, live = scan_journals(journal_dir(key))
    runs = [r for r in runs if r.tag != own]
    if session_id is not None:
        runs = [r for r in runs if r.header.get("session") == session_id]
    objects, unreadable = token.call(lambda: readable_objects(session), "C_FindObjects")
    for line in unreadable:
        print(f"p11tls: token {token.label!r}: {line}", file=sys.stderr)
    found = token.call(lambda: harness_objects(objects, runs, live, own), "C_GetAttributeValue")
    if session_id is not None:
        tags = {r.tag for r in runs}
        found = [o for o in found if (o.label.split("-") + ["", ""])[1] in tags]
    return found, runs


def prune_journals(runs: list[EarlierRun], left: list[LeftObject]) -> int:
    """Delete journals of ended runs none of whose objects are on the token."""
    still = {(o.label, o.id_hex) for o in left} | {(o.label, "") for o in left}
    pruned = 0
    for run in runs:
        if not any((label, key_id) in still for label, key_id in run.entries) and not any(
                o.label.startswith(f"p11tls-{run.tag}-") for o in left):
            run.path.unlink(missing_ok=True)
            pruned += 1
    return pruned


def leftovers_on(token: Token, key: str, own: str, module: Path | str) -> str | None:
    """The one line about earlier runs' leftovers (logged in: every object is
    visible); journals whose objects are all gone are deleted quietly."""
    found, runs = find_leftovers(token, key, token.session, own)
    prune_journals(runs, found)
    runs = [r for r in runs if r.path.exists()]
    return leftovers_line(f"token {token.label!r}", found, runs, cleanup_hint(module, token.label))


def delete(token: Token, objects: list[LeftObject]) -> list[LeftObject]:
    """Destroy the objects; raise CleanupError naming every one left."""
    left, why = [], ""
    for obj in objects:
        try:
            token.call(obj.handle.destroy, "C_DestroyObject")
        except p11exc.ObjectHandleInvalid:
            continue  # gone with another (OpenSC sc-hsm drops a key's public half with it)
        except (HarnessError, p11exc.PKCS11Error) as exc:
            why = why or (str(exc) if isinstance(exc, HarnessError) else ckr_of(exc))
            left.append(obj)
    if left:
        raise CleanupError(f"token {token.label!r}", left, why)
    return objects
