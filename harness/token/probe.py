"""Questions to a token asked in a child process: `python -m harness.token.probe VERB`.

A process may load a PKCS#11 module path only once (python-pkcs11 keeps it
initialised), and the parent often loads the same module later (the run's
own token, the clients). So every question asked before that — log in once,
describe the token, list the keys to test read-only, list the tokens of a
module — runs in one short-lived child, the PIN on its stdin, one JSON
answer on its stdout, and a one-line error on its stderr.

Verbs (arguments after the verb):
  login | login-ro MODULE LABEL [KEY OWN HINT_MODULE]  log in once (read-only
                   session with login-ro); with KEY (the token's journals) the
                   answer has `leftovers`
  info MODULE LABEL                                the token's description, no login
  keys MODULE LABEL [--all] [URI ...]              the key pairs to test read-only
  tokens MODULE                                    every token's label and serial
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, TokenError
from harness.matrix.keys import Algorithm, KeySpec
from harness.pkcs11 import exception_return_code
from harness.token.cleanup import leftovers_on
from harness.token.existing_keys import discover, parse_key_uri
from harness.token.session import Token, exit_if_in_flight, load_module, text_of

CALL_TIMEOUT_S = 20.0  # per call, as --p11-timeout's default
TIMEOUT_VARIABLE = "P11TLS_PROBE_TIMEOUT"  # the child's per-call bound


def child_limit(timeout_s: float) -> float:
    """The whole child: starting Python, C_Initialize, and a few calls of at
    most `timeout_s` each (a card's C_Initialize takes seconds; a module that
    hangs must not hang the run past --p11-timeout's few multiples)."""
    return 3 * timeout_s + 5


def ask(verb: str, args: list[str], stdin: str = "", env: dict[str, str] | None = None,
        timeout_s: float = CALL_TIMEOUT_S) -> Any:
    """Run one probe verb in a child process and return its JSON answer; its
    one-line error becomes a TokenError. Each of its calls is bounded by
    `timeout_s`, the child by child_limit(timeout_s)."""
    limit = child_limit(timeout_s)
    try:
        proc = subprocess.run([sys.executable, "-m", "harness.token.probe", verb, *args],
                              input=stdin, capture_output=True, text=True, timeout=limit,
                              check=False, env={**os.environ, **(env or {}),
                                                TIMEOUT_VARIABLE: f"{timeout_s:g}"})
    except subprocess.TimeoutExpired:
        raise TokenError(f"the token did not answer within {limit:g} s ({verb} in a child "
                         "process, --p11-timeout "
                         f"{timeout_s:g} s per call): check the reader and the module, or "
                         "raise --p11-timeout") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise TokenError(lines[-1])
    return json.loads(proc.stdout)


def check_login(module: Path, label: str, pin: str,
                env: dict[str, str] | None = None, *, journal_key: str | None = None,
                own: str = "", hint_module: Path | None = None,
                read_only: bool = False, timeout_s: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """Log in once and return the token's description (with `pin_warning`);
    raise the same one-line error as Token does. `env` is added to the child's
    environment (an interposer configuration). With `journal_key` (the real
    token's, see locking.token_key) the description has `leftovers`: the one
    line about objects earlier runs left, or None."""
    scan = ([journal_key, own, str(hint_module or module)] if journal_key is not None
            else [])
    verb = "login-ro" if read_only else "login"  # a read-only run: a read-only session
    info: dict[str, Any] = ask(verb, [str(module), label, *scan], pin, env, timeout_s)
    return info


def describe_token(module: Path, label: str,
                   timeout_s: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """The token's description, without logging in."""
    info: dict[str, Any] = ask("info", [str(module), label], timeout_s=timeout_s)
    return info


def existing_specs(module: Path, token_label: str, *, all_pairs: bool,
                   uris: tuple[str, ...], env: dict[str, str] | None = None,
                   timeout_s: float = CALL_TIMEOUT_S) -> tuple[KeySpec, ...]:
    """The KeySpecs of the keys to test read-only, read without a login."""
    for uri in uris:
        parse_key_uri(uri)  # bad input stops here, with its one line
    found = ask("keys", [str(module), token_label, *(["--all"] if all_pairs else []), *uris],
                env=env, timeout_s=timeout_s)
    if not found:
        what = "no key pair with a certificate" if all_pairs else "no key"
        raise TokenError(f"token {token_label!r} holds {what} to test read-only")
    return tuple(KeySpec(k["name"], Algorithm(k["algorithm"]), k["bits"], k["curve"],
                         k["ec_params_hex"]) for k in found)


def list_tokens(module: Path) -> list[dict[str, str]]:
    """Every token of the module: label and serial, without logging in."""
    tokens: list[dict[str, str]] = ask("tokens", [str(module)])
    return tokens


# -- the child side ------------------------------------------------------------------
def _call_timeout() -> float:
    return float(os.environ.get(TIMEOUT_VARIABLE) or CALL_TIMEOUT_S)


def _login(argv: list[str], read_only: bool) -> Any:
    token = Token(Path(argv[0]), argv[1], sys.stdin.read(), timeout_s=_call_timeout(),
                  read_only=read_only)
    try:
        _ = token.session
        extra = ({"leftovers": leftovers_on(token, argv[2], argv[3], argv[4])}
                 if len(argv) > 4 else {})
        return {**token.info().as_dict(), "pin_warning": token.pin_warning, **extra}
    finally:
        token.close()


def _info(argv: list[str]) -> Any:
    token = Token(Path(argv[0]), argv[1], "", timeout_s=_call_timeout())
    try:
        return {**token.info().as_dict(), "pin_warning": token.pin_warning}
    finally:
        token.close()


def _keys(argv: list[str]) -> Any:
    module, label, rest = Path(argv[0]), argv[1], argv[2:]
    uris = tuple(parse_key_uri(u) for u in rest if u != "--all")
    token = load_module(module).get_token(token_label=label)
    with token.open(rw=False) as session:  # public objects: no login
        keys = discover(session, all_pairs="--all" in rest, uris=uris)
    return [k.to_json() for k in keys]


def _tokens(argv: list[str]) -> Any:
    return [{"label": text_of(t.label), "serial": text_of(t.serial)}
            for t in load_module(Path(argv[0])).get_tokens()]


VERBS = {"login": lambda a: _login(a, False), "login-ro": lambda a: _login(a, True),
         "info": _info, "keys": _keys, "tokens": _tokens}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in VERBS:
        print(f"usage: python -m harness.token.probe {'|'.join(VERBS)} ARGS", file=sys.stderr)
        return 2
    try:
        answer = VERBS[argv[0]](argv[1:])
    except HarnessError as exc:
        print(exc, file=sys.stderr)
        exit_if_in_flight(2, say=False)  # the parent shows this line, the last one
        return 2
    except Exception as exc:  # noqa: BLE001 - one line for the parent, never a traceback
        what = exception_return_code(exc) or f"{type(exc).__name__}: {exc}"
        print(f"asking the token ({argv[0]}) failed: {what}", file=sys.stderr)
        return 2
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
