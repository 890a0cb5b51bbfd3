"""The transcript-size sweep: grow the TLS 1.2 transcript step by step and
find, per client and key, the largest CertificateVerify input the token
accepted and the first size it refused.

Used by `p11tls sweep` and by the tests; it drives the same MatrixRunner as
the matrix, so every step is a real handshake with its calls recorded.

A token that stops answering ends the sweep at that step (one timeout, not
one per remaining step: a card that hung answers no later step either), and
the sweep reports what it found up to there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.commands.token_command import token_command
from harness.errors import ConfigError, HarnessError
from harness.matrix.cases import Case
from harness.matrix.keys import Provisioning, key_spec
from harness.matrix.record import HandshakeRecord
from harness.run.config import OPTIONS, add_runner_options, resolve
from harness.run.runner import MatrixRunner
from harness.tls.version import TLSVersion
from harness.token.journal import CleanupError

DEFAULT_STEPS_KIB = (0, 1, 2, 4, 8, 16)  # padding of the CertificateRequest, KiB


@dataclass
class SweepResult:
    """One client × key: every step, the largest accepted input, the first failure."""

    client: str
    key: str
    steps: list[dict[str, object]] = field(default_factory=list)
    largest_ok_input: int | None = None
    first_failure: dict[str, object] | None = None
    stopped: str | None = None  # why the sweep ended early: the token stopped answering

    def summary(self) -> str:
        ok = (f"largest accepted input {self.largest_ok_input} B"
              if self.largest_ok_input is not None else "no signature accepted")
        if self.stopped is not None:
            refused = ("" if self.first_failure is None else
                       f"; smallest refused input so far {self.first_failure['input_bytes']} B")
            return f"{self.client} {self.key}: {ok}{refused}; stopped: {self.stopped}"
        if self.first_failure is None:
            return f"{self.client} {self.key}: {ok}; no limit found"
        f = self.first_failure
        return (f"{self.client} {self.key}: {ok}; smallest refused input {f['input_bytes']} B "
                f"({f['mechanism']}, +{f['padding_bytes']} B of CA names) -> {f['error']}")


UNRESPONSIVE = ("client timed out after", "did not answer", "token stopped answering",
                "still busy with an abandoned")


def unresponsive(record: HandshakeRecord) -> bool:
    """The step got no answer in time (from the token or the client on it)."""
    return any(mark in (record.error or "") for mark in UNRESPONSIVE)


class _Stopped(Exception):
    pass


def sweep(run: Callable[[Case], HandshakeRecord], client: str, key: str,
          steps_kib: Sequence[int] = DEFAULT_STEPS_KIB,
          progress: Callable[[str], None] | None = None, *, bisect: bool = True,
          resolution: int = 4) -> SweepResult:
    """Run the TLS 1.2 case at each padding step until one fails; then, with
    `bisect`, narrow the padding between the last success and that failure
    down to `resolution` bytes, so the limit is found to within a few bytes."""
    result = SweepResult(client, key)

    def step(padding: int) -> bool:
        case = Case(client, key_spec(key), Provisioning.GENERATE, TLSVersion.TLS12,
                    padding_bytes=padding)
        record = run(case)
        if unresponsive(record):
            result.stopped = (f"no answer at +{padding} B of CA names ({record.error}); "
                              "the token stopped answering, later steps were not run")
            if progress:
                progress(f"  +{padding:>5} B of CA names: {record.outcome:4} {record.error}")
            raise _Stopped
        if record.outcome == "skip":
            raise ConfigError(f"{client} cannot run here: {record.error}")
        sign = record.sign or {}
        entry = {"padding_bytes": padding, "outcome": record.outcome,
                 "mechanism": sign.get("mechanism"), "parts": sign.get("parts"),
                 "input_bytes": sign.get("input_bytes"),
                 "error": record.error if record.outcome != "ok" else None}
        result.steps.append(entry)
        if progress:
            progress(f"  +{padding:>5} B of CA names: {record.outcome:4} "
                     f"{entry['mechanism'] or '-'} {entry['input_bytes'] or '-'} B "
                     f"{entry['error'] or ''}".rstrip())
        size = entry["input_bytes"]
        if record.outcome == "ok":
            if isinstance(size, int):
                result.largest_ok_input = max(result.largest_ok_input or 0, size)
            return True
        smallest = result.first_failure.get("input_bytes") if result.first_failure else None
        if smallest is None or (isinstance(size, int) and isinstance(smallest, int)
                                and size < smallest):
            result.first_failure = entry  # the smallest input refused so far
        return False

    try:
        _steps(step, steps_kib, bisect, resolution)
    except _Stopped:
        pass
    return result


def _steps(step: Callable[[int], bool], steps_kib: Sequence[int], bisect: bool,
           resolution: int) -> None:
    last_ok: int | None = None
    failing: int | None = None
    for kib in steps_kib:
        if not step(kib * 1024):
            failing = kib * 1024
            break
        last_ok = kib * 1024
    if bisect and last_ok is not None and failing is not None:
        while failing - last_ok > resolution:
            middle = (last_ok + failing) // 2
            if step(middle):
                last_ok = middle
            else:
                failing = middle


# TLS 1.2's CertificateRequest holds at most 65535 bytes of CA names (RFC 5246
# 7.4.4, certificate_authorities<0..2^16-1>), the harness's own CA name among them.
MAX_STEP_KIB = 63
MAX_STEPS = 64


def parse_steps(text: str) -> list[int]:
    """--steps: KiB of extra CA names, each within what TLS itself can carry."""
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--steps takes whole KiB numbers, not {text!r}") from None
    if not steps or min(steps) < 0:
        raise ConfigError("--steps needs one or more sizes >= 0")
    if len(steps) > MAX_STEPS:
        raise ConfigError(f"--steps: at most {MAX_STEPS} steps, not {len(steps)}")
    if max(steps) > MAX_STEP_KIB:
        raise ConfigError(
            f"--steps {max(steps)}: a TLS 1.2 CertificateRequest carries at most 65535 bytes "
            f"of CA names (RFC 5246 7.4.4), so steps go up to {MAX_STEP_KIB} KiB; larger "
            "ones would measure TLS's limit, not the token's")
    return steps


def sweep_main(argv: Sequence[str]) -> int:
    """`p11tls sweep`: the sweep on the configured module (default: throw-away SoftHSM2)."""
    parser = argparse.ArgumentParser(prog="p11tls sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="java",
                        help="comma-separated clients (default: java)")
    parser.add_argument("--keys", default="p256", help="comma-separated keys (default: p256)")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS_KIB)),
                        help="padding steps in KiB of extra CA names, 0 to "
                        f"{MAX_STEP_KIB} (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--coarse", action="store_true",
                        help="stop at the first failing step instead of narrowing the limit down")
    add_runner_options(parser)
    args = parser.parse_args(argv)
    try:
        steps = parse_steps(args.steps)
        pairs = [(c.strip(), k.strip()) for c in args.clients.split(",")
                 for k in args.keys.split(",")]
        if any(not c or not k for c, k in pairs):
            raise ConfigError(f"--clients {args.clients!r} / --keys {args.keys!r}: an empty "
                              "name; give comma-separated names")
        settings = resolve({o.name: getattr(args, o.name, None) for o in OPTIONS}, {}, os.environ)
    except HarnessError as exc:
        print(f"p11tls sweep: {exc}", file=sys.stderr)
        return 2
    return token_command("p11tls sweep", lambda: _sweep_and_say(
        settings, pairs, steps, None if args.json else print, args.json, not args.coarse))


def _sweep_and_say(settings: Any, pairs: list[tuple[str, str]], steps: list[int],
                   say: Callable[[str], None] | None, as_json: bool, bisect: bool) -> int:
    """Every client × key, then the summary (also when the token stopped
    answering: what was measured so far, exit 1)."""

    runner = MatrixRunner(settings)
    results: list[SweepResult] = []
    left: CleanupError | None = None
    try:
        for client, key in pairs:
            if results and results[-1].stopped:
                break  # the token stopped answering: no later sweep gets an answer
            if say:
                say(f"{client} {key}, TLS 1.2:")
            results.append(sweep(runner.run, client, key, steps, say, bisect=bisect))
    finally:
        try:
            runner.close()
        except CleanupError as exc:
            left = exc
            print(f"p11tls sweep: {left}", file=sys.stderr)
    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        for r in results:
            print(r.summary())
    return 1 if left is not None or any(r.stopped for r in results) else 0
