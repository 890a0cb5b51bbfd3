"""Leftovers of earlier runs on a named token: finding them (one line at the
start of a run) and `p11tls cleanup`, which lists them and deletes them only
with --yes. An object is a leftover when its label is `p11tls-<run>-…` of a
run that is not alive, or an ended run's journal names its label and CKA_ID;
objects of a live run (its journal is locked) are never touched.
"""

from __future__ import annotations

from pathlib import Path

from pkcs11 import exceptions as p11exc

from harness.errors import HarnessError
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
    objects = token.call(lambda: list(session.get_objects()),  # type: ignore[attr-defined]
                         "C_FindObjects")
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
        except (HarnessError, p11exc.PKCS11Error) as exc:
            why = why or (str(exc) or type(exc).__name__)
            left.append(obj)
    if left:
        raise CleanupError(f"token {token.label!r}", left, why)
    return objects
