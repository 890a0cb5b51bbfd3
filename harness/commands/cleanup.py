"""`p11tls cleanup`: list what earlier runs left on a named token; delete it with --yes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.commands.token_command import token_command
from harness.errors import ConfigError, HarnessError
from harness.token.cleanup import delete, find_leftovers, prune_journals
from harness.token.locking import TokenLock, token_key
from harness.token.session import Token


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
    return token_command("p11tls cleanup", lambda: _cleanup(args, pin))


def _cleanup(args: argparse.Namespace, pin: str | None) -> int:
    module: Path = args.p11_module.expanduser()
    if not module.is_file():
        raise ConfigError(f"PKCS#11 module {module} does not exist: check --p11-module")
    token = Token(module, args.p11_token_label, pin or "", timeout_s=args.timeout)
    key = token_key(token.identity)  # the same token through any module path
    lock = TokenLock(key, f"token {token.label!r}")
    try:
        # never beside a live run: its objects are not leftovers
        if not args.parent_holds_lock and not lock.acquire(wait=False):
            raise HarnessError(
                f"token {token.label!r} is in use by a live harness run "
                f"({lock.holder() or 'pid unknown'}): nothing was listed or deleted; run "
                "`p11tls cleanup` again after it ends")
        if pin:
            session = token.session
        else:
            session = token.call(lambda: token.token.open(rw=True), "C_OpenSession")
        found, runs = find_leftovers(token, key, session, session_id=args.session)
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
