"""Leftovers of earlier runs on a named token: finding them (one line at the
start of a run) and `p11tls cleanup`, which lists them and deletes them only
with --yes. An object is a leftover when its label is `p11tls-<run>-…` of a
run that is not alive, or an ended run's journal names its label and CKA_ID;
objects of a live run (its journal is locked) are never touched.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pkcs11 import exceptions as p11exc

from harness.errors import ConfigError, HarnessError
from harness.journal import (
    CleanupError,
    EarlierRun,
    LeftObject,
    harness_objects,
    journal_dir,
    leftovers_line,
    scan_journals,
)
from harness.locking import TokenLock, token_key
from harness.token import Token


def cleanup_hint(module: Path | str, label: str) -> str:
    return (f"`p11tls cleanup --p11-module {module} --p11-token-label '{label}' --p11-pin …` "
            "lists them, with --yes deletes them")


def find_leftovers(token: Token, module: Path | str, session: object,
                   own: str | None = None,
                   session_id: str | None = None) -> tuple[list[LeftObject], list[EarlierRun]]:
    """(objects, journals) of ended runs on the token; `session_id` narrows it
    to the runs of one pytest session (its xdist workers)."""
    runs, live = scan_journals(journal_dir(module, token.serial, token.label))
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


def leftovers_on(token: Token, module: Path | str, own: str) -> str | None:
    """The one line about earlier runs' leftovers (logged in: every object is
    visible); journals whose objects are all gone are deleted quietly."""
    found, runs = find_leftovers(token, module, token.session, own)
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


def cleanup_main(argv: Sequence[str]) -> int:
    """`p11tls cleanup --p11-module M --p11-token-label L [--p11-pin P] [--yes]`."""
    parser = argparse.ArgumentParser(
        prog="p11tls cleanup",
        description="List the objects earlier harness runs left on a token (labels "
        "p11tls-…, or named in a run's journal); delete them with --yes.")
    parser.add_argument("--p11-module", required=True, type=Path)
    parser.add_argument("--p11-token-label", required=True)
    parser.add_argument("--p11-pin", default=None,
                        help="user PIN: without it private keys are not visible")
    parser.add_argument("--pin-stdin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--session", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--parent-holds-lock", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=20.0, help=argparse.SUPPRESS)
    parser.add_argument("--yes", action="store_true", help="delete what is listed")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    pin = sys.stdin.read() if args.pin_stdin else args.p11_pin
    try:
        return _cleanup(args, pin)
    except HarnessError as exc:
        print(f"p11tls cleanup: {exc}", file=sys.stderr)
        return 2


def _cleanup(args: argparse.Namespace, pin: str | None) -> int:
    module: Path = args.p11_module.expanduser()
    if not module.is_file():
        raise ConfigError(f"PKCS#11 module {module} does not exist: check --p11-module")
    token = Token(module, args.p11_token_label, pin or "", timeout_s=args.timeout)
    lock = TokenLock(token_key(module, token.serial, token.label), f"token {token.label!r}")
    try:
        if not args.parent_holds_lock:  # never beside a live run
            lock.acquire(lambda line: print(line, file=sys.stderr))
        if pin:
            session = token.session
        else:
            session = token.call(lambda: token.token.open(rw=True), "C_OpenSession")
        found, runs = find_leftovers(token, module, session, session_id=args.session)
        if args.session is None:
            for obj in found:
                print(f"{obj.label}\tCKA_ID {obj.id_hex or '-'}\t{obj.cls}")
            for run in runs:
                h = run.header
                print(f"journal {run.path.name}: run {run.tag} on {h.get('host', '?')} "
                      f"(pid {h.get('pid', '?')}, started {h.get('started', '?')}), "
                      f"{len(run.entries)} key{'s' * (len(run.entries) != 1)}")
            if not pin:
                print("(without --p11-pin private objects are not visible)")
        if not args.yes:
            print(f"{len(found)} object{'s' * (len(found) != 1)} left by earlier runs"
                  + ("; run again with --yes to delete them" if found else ""))
            return 0
        delete(token, found)
        pruned = prune_journals(runs, []) if pin else 0
        if args.session is None or found:
            print(f"deleted {len(found)} object{'s' * (len(found) != 1)}"
                  + (f" and {pruned} journal{'s' * (pruned != 1)}" if pruned else ""))
        return 0
    finally:
        token.close()
        lock.release()


if __name__ == "__main__":
    sys.exit(cleanup_main(sys.argv[1:]))
