"""The sweep directly on the token: no TLS, only C_Sign.

For each combined hash-and-sign mechanism the token offers (CKM_ECDSA_SHA*,
CKM_SHA*_RSA_PKCS, CKM_SHA*_RSA_PKCS_PSS: the ones where the token, not the
client, gets the whole message), sign N bytes with a key generated for the
sweep and bisect the largest N the token accepts and the smallest it refuses.
Then say which TLS cases that limit rules out: a client that picks such a
mechanism hands the token the whole TLS 1.2 transcript, but only 130/146 bytes
in TLS 1.3.

It runs in the MatrixRunner's process, so the token is loaded exactly as the
harness provisions it: under `--p11-profile` through the interposer with the
profile (emulated combined mechanisms, input caps), otherwise the module
itself. Only this process loads the module (one module per process): tests
run `p11tls token-sweep` as a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, NoReturn

from harness.commands.token_command import token_command
from harness.errors import ConfigError, HarnessError
from harness.matrix.keys import Provisioning, key_spec
from harness.run.config import OPTIONS, add_runner_options, resolve
from harness.run.measure import keep_measurement
from harness.run.runner import MatrixRunner
from harness.token.journal import CleanupError
from harness.token.provision import ckr_name
from harness.token.session import TokenTimeout

# What a CertificateVerify hands the token with a combined mechanism, as the
# server saw it in this harness's runs (README, "What the server saw"): TLS 1.3
# signs 64 + 34 + the transcript hash; TLS 1.2 the whole transcript, ≈ 1.6 KB
# (Java, P-256, no CA names) to ≈ 2.7 KB (pkcs11-provider, RSA), more with
# longer chains or CertificateRequest CA lists.
TLS13_INPUT = 146  # the larger of 130 (SHA-256 suites) and 146 (SHA-384)
TLS13_TEXT = "130/146 B"
TLS12_TRANSCRIPT = (1573, 2700)
DEFAULT_MAX_BYTES = 65536
COMBINED = re.compile(
    r"^CKM_(ECDSA_SHA(1|224|256|384|512)|SHA(1|224|256|384|512)_RSA_PKCS(_PSS)?)$")
HASH_BYTES = {"1": 20, "224": 28, "256": 32, "384": 48, "512": 64}


@dataclass
class MechanismLimit:
    """What one mechanism did: every size tried, the largest accepted and the
    smallest refused input (None: none accepted / no limit up to max_bytes)."""

    mechanism: str
    key: str
    largest_ok: int | None = None
    smallest_refused: int | None = None
    refused_rv: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    tries: list[tuple[int, str]] | None = None  # (bytes, "CKR_OK" or the CKR code)
    stopped: str | None = None  # the token stopped answering: what was measured so far

    def summary(self) -> str:
        if self.stopped is not None:
            ok = (f"largest accepted {self.largest_ok} B so far" if self.largest_ok is not None
                  else "nothing accepted so far")
            refused = ("" if self.smallest_refused is None else
                       f", smallest refused {self.smallest_refused} B ({self.refused_rv})")
            return f"{self.mechanism} ({self.key}): {ok}{refused}; stopped: {self.stopped}"
        if self.largest_ok is None:
            return (f"{self.mechanism} ({self.key}): refused every size tried, "
                    f"from {self.smallest_refused} B on ({self.refused_rv})")
        if self.smallest_refused is None:
            return (f"{self.mechanism} ({self.key}): largest accepted {self.largest_ok} B; "
                    f"no limit up to {self.max_bytes} B")
        return (f"{self.mechanism} ({self.key}): largest accepted {self.largest_ok} B, "
                f"smallest refused {self.smallest_refused} B ({self.refused_rv})")

    def rules_out(self) -> str:
        """Which TLS CertificateVerify inputs this limit rules out, in one sentence."""
        if self.stopped is not None:
            return "unknown: the sweep did not finish (the token stopped answering)"
        low, high = TLS12_TRANSCRIPT
        tls12 = f"≈ {low / 1000:.1f}–{high / 1000:.1f} KB here"
        if self.largest_ok is None:
            return (f"{self.mechanism} signs nothing here: a client that picks it fails in "
                    "TLS 1.2 and TLS 1.3 alike")
        if self.smallest_refused is None:
            return f"no TLS case: TLS 1.2 transcripts ({tls12}) and TLS 1.3 ({TLS13_TEXT}) fit"
        limit = self.largest_ok
        who = f"a client that picks {self.mechanism} (Java SunPKCS11, pkcs11-provider)"
        if limit < TLS13_INPUT:
            return f"TLS 1.3 ({TLS13_TEXT} signed) and every TLS 1.2 transcript, for {who}"
        if limit < low:
            return (f"every TLS 1.2 handshake of {who}: its transcripts ({tls12}) are above "
                    f"{limit} B; TLS 1.3 ({TLS13_TEXT}) fits")
        if limit < high:
            return (f"TLS 1.2 transcripts over {limit} B for {who}: the larger ones ({tls12}; "
                    f"RSA certificates, CA lists, longer chains) fail; TLS 1.3 ({TLS13_TEXT}) "
                    "fits")
        return (f"no TLS transcript seen here (≤ {high / 1000:.1f} KB), but a TLS 1.2 "
                f"handshake with a longer chain or CA list than {limit} B allows fails")


def combined_mechanisms(offered: Sequence[str]) -> list[str]:
    """The combined hash-and-sign mechanisms among `offered`, in a stable order."""
    return sorted((m for m in offered if COMBINED.match(m)), key=_order)


def _order(mechanism: str) -> tuple[int, int, str]:
    bits = re.search(r"SHA(\d+)", mechanism)
    return (0 if "ECDSA" in mechanism else 1 if "PSS" not in mechanism else 2,
            int(bits.group(1)) if bits else 0, mechanism)


def key_for(mechanism: str) -> str:
    return "p256" if "ECDSA" in mechanism else "rsa2048"


class TokenStopped(Exception):
    """sign(n) got no answer: the sweep ends with what it measured."""


def bisect_limit(sign: Callable[[int], str | None], mechanism: str, key: str,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> MechanismLimit:
    """Find the largest accepted / smallest refused size with `sign(n)` (None:
    signed, else the CKR code). Doubles from 1 byte up to max_bytes, then
    bisects the gap down to one byte. Assumes one limit (a token that refuses
    small inputs and takes large ones would be reported as refusing all)."""
    result = MechanismLimit(mechanism, key, max_bytes=max_bytes, tries=[])
    assert result.tries is not None
    try:
        _bisect(sign, result, max_bytes)
    except TokenStopped as exc:
        result.stopped = str(exc)
    return result


def _bisect(sign: Callable[[int], str | None], result: MechanismLimit, max_bytes: int) -> None:
    def attempt(n: int) -> bool:
        rv = sign(n)
        result.tries.append((n, rv or "CKR_OK"))  # type: ignore[union-attr]
        if rv is None:
            result.largest_ok = max(result.largest_ok or 0, n)
            return True
        if result.smallest_refused is None or n < result.smallest_refused:
            result.smallest_refused, result.refused_rv = n, rv
        return False

    size, last_ok = 1, 0
    while True:
        if not attempt(size):
            break
        last_ok = size
        if size >= max_bytes:
            return
        size = min(size * 2, max_bytes)
    if last_ok == 0:
        return  # not even one byte: not a size limit
    low, high = last_ok, size
    while high - low > 1:
        middle = (low + high) // 2
        if attempt(middle):
            low = middle
        else:
            high = middle


def _mechanism_param(mechanism: str) -> Any:
    """PSS parameters as TLS 1.3 wants them: the mechanism's hash, MGF1 with it, salt = hash."""
    if not mechanism.endswith("_RSA_PKCS_PSS"):
        return None
    from pkcs11 import MGF, Mechanism

    bits = mechanism.removeprefix("CKM_SHA").split("_", 1)[0]
    digest = Mechanism.SHA_1 if bits == "1" else Mechanism[f"SHA{bits}"]
    mgf = MGF.SHA1 if bits == "1" else MGF[f"SHA{bits}"]
    return (digest, mgf, HASH_BYTES[bits])


def sweep_token(runner: Any, mechanisms: Sequence[str] | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES,
                progress: Callable[[str], None] | None = None) -> list[MechanismLimit]:
    """Sweep every combined mechanism the runner's token offers (or those named)."""
    from pkcs11 import Mechanism, ObjectClass
    from pkcs11 import exceptions as p11exc


    offered = runner.token_mechanisms(key_spec("p256"))
    chosen = combined_mechanisms(
        [f"CKM_{m}" if not m.startswith("CKM_") else m for m in offered])
    if mechanisms:
        unknown = [m for m in mechanisms if m not in chosen]
        if unknown:
            raise ConfigError(
                f"the token does not offer {', '.join(unknown)} as a combined hash-and-sign "
                f"mechanism; it offers: {', '.join(chosen) or 'none'}")
        chosen = [m for m in chosen if m in mechanisms]
    results = []
    token = runner.main_token
    for mechanism in chosen:
        _free_device(runner)
        key = key_for(mechanism)
        try:
            provisioned = runner.key(key_spec(key), Provisioning.GENERATE)
            session = token.session
            private = token.call(partial(session.get_key, object_class=ObjectClass.PRIVATE_KEY,
                                         id=bytes.fromhex(provisioned.id_hex)), "C_FindObjects")
        except TokenTimeout as exc:
            results.append(MechanismLimit(mechanism, key, max_bytes=max_bytes, tries=[],
                                          stopped=str(exc)))
            if progress:
                progress(results[-1].summary())
            break
        mech = Mechanism[mechanism.removeprefix("CKM_")]
        param = _mechanism_param(mechanism)

        def sign(n: int, private: Any = private, mech: Any = mech,
                 param: Any = param) -> str | None:
            data = bytes(i % 251 for i in range(n))
            try:
                token.call(lambda: private.sign(data, mechanism=mech, mechanism_param=param),
                           "C_Sign")
            except p11exc.PKCS11Error as exc:
                return ckr_name(exc)
            except TokenTimeout as exc:
                raise TokenStopped(f"no answer to {n} B ({exc})") from None
            return None

        found = bisect_limit(sign, mechanism, key, max_bytes)
        if progress:
            progress(f"{found.summary()}\n  rules out: {found.rules_out()}")
        results.append(found)
        if found.stopped:
            break  # a token that hung answers no later mechanism either
    return results


def _free_device(runner: Any) -> None:
    """On a device with few slots and no resource manager (tpm2-pkcs11 on swtpm):
    log this process's session out and flush what it loaded before the next
    key is generated or loaded (the matrix does the same between cases)."""
    setup = getattr(runner, "setup", None)
    if setup is None:
        return
    if setup.release_sessions:
        for token in runner.tokens.values():
            token.release_session()
    setup.after_case()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (usage: p11tls token-sweep [--mechanisms M,…] "
                          "[--max-bytes N] [--json] [--p11-…])")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="p11tls token-sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--mechanisms", default=None,
                        help="comma-separated combined mechanisms (default: every one offered)")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                        help="largest input tried (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_runner_options(parser)
    return parser


def token_sweep_main(argv: Sequence[str]) -> int:
    """`p11tls token-sweep`: exit 0 with the limits, 1 when the token stopped
    answering (with what was measured), 2 with one line on bad input."""
    try:
        args = build_parser().parse_args(list(argv))
        if not 1 <= args.max_bytes <= 16 * 1024 * 1024:
            raise ConfigError(f"--max-bytes must be between 1 and 16777216, not {args.max_bytes}")
        wanted = [m.strip() if m.strip().startswith("CKM_") else "CKM_" + m.strip()
                  for m in (args.mechanisms or "").split(",") if m.strip()]
        if args.mechanisms is not None and not wanted:
            raise ConfigError(f"--mechanisms {args.mechanisms!r} names no mechanism: name "
                              "some (CKM_ECDSA_SHA256,…) or leave the option out for all")
        settings = resolve({o.name: getattr(args, o.name, None) for o in OPTIONS}, {}, os.environ)
    except HarnessError as exc:
        print(f"p11tls token-sweep: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    say = None if args.json else print
    return token_command("p11tls token-sweep",
                         lambda: _sweep_and_say(settings, wanted, args.max_bytes, args.json, say))


def _sweep_and_say(settings: Any, wanted: list[str], max_bytes: int, as_json: bool,
                   say: Callable[[str], None] | None) -> int:
    """The sweep, then its summary (also when the token stopped answering:
    what was measured so far, exit 1)."""

    runner = MatrixRunner(settings)
    try:
        if say and runner.profile is not None:
            say(f"emulation of {runner.profile.emulates} (profile {runner.profile.name})")
        results = sweep_token(runner, wanted, max_bytes, say)
        if not any(r.stopped for r in results):  # a token that stopped measured nothing whole
            kept = keep_measurement(runner, results)  # for doctor and the matrix
            if say and kept is not None:
                say(f"kept for p11tls doctor and the matrix: {kept}")
    finally:
        left: CleanupError | None = None
        try:
            runner.close()
        except CleanupError as exc:
            left = exc
            print(f"p11tls token-sweep: {left}", file=sys.stderr)
    stopped = any(r.stopped for r in results)
    if as_json:
        print(json.dumps([{**asdict(r), "rules_out": r.rules_out()} for r in results], indent=2))
    elif not results:
        print("the token offers no combined hash-and-sign mechanism: clients hash on the host, "
              "so no TLS case depends on an input limit of the token")
    elif stopped:
        print("the token stopped answering; measured so far:")
        for r in results:
            print(f"  {r.summary()}")
    return 1 if stopped or left is not None else 0
