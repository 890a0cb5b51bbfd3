"""The transcript-size sweep: grow the TLS 1.2 transcript step by step and
find, per client and key, the largest CertificateVerify input the token
accepted and the first size it refused.

Used by `p11tls sweep` and by the tests; it drives the same MatrixRunner as
the matrix, so every step is a real handshake with its calls recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from harness.config import OPTIONS, resolve
from harness.errors import ConfigError, HarnessError
from harness.keys import Provisioning, key_spec
from harness.matrix import Case
from harness.record import HandshakeRecord
from harness.tls import TLSVersion

DEFAULT_STEPS_KIB = (0, 1, 2, 4, 8, 16)


@dataclass
class SweepResult:
    """One client × key: every step, the largest accepted input, the first failure."""

    client: str
    key: str
    steps: list[dict[str, object]] = field(default_factory=list)
    largest_ok_input: int | None = None
    first_failure: dict[str, object] | None = None

    def summary(self) -> str:
        ok = (f"largest accepted input {self.largest_ok_input} B"
              if self.largest_ok_input is not None else "no signature accepted")
        if self.first_failure is None:
            return f"{self.client} {self.key}: {ok}; no limit found"
        f = self.first_failure
        return (f"{self.client} {self.key}: {ok}; first failure at +{f['padding_bytes']} B of "
                f"CA names: {f['mechanism']} over {f['input_bytes']} B -> {f['error']}")


def sweep(run: Callable[[Case], HandshakeRecord], client: str, key: str,
          steps_kib: Sequence[int] = DEFAULT_STEPS_KIB,
          progress: Callable[[str], None] | None = None) -> SweepResult:
    """Run the TLS 1.2 case at each padding step; stop after the first failure."""
    result = SweepResult(client, key)
    for kib in steps_kib:
        case = Case(client, key_spec(key), Provisioning.GENERATE, TLSVersion.TLS12,
                    padding_bytes=kib * 1024)
        record = run(case)
        sign = record.sign or {}
        step = {"padding_bytes": case.padding_bytes, "outcome": record.outcome,
                "mechanism": sign.get("mechanism"), "parts": sign.get("parts"),
                "input_bytes": sign.get("input_bytes"),
                "error": record.error if record.outcome != "ok" else None}
        result.steps.append(step)
        if progress:
            progress(f"  +{kib:>3} KiB: {record.outcome:4} {step['mechanism'] or '-'} "
                     f"{step['input_bytes'] or '-'} B {step['error'] or ''}".rstrip())
        if record.outcome == "skip":
            raise ConfigError(f"{client} cannot run here: {record.error}")
        if record.outcome == "ok":
            size = step["input_bytes"]
            if isinstance(size, int):
                result.largest_ok_input = max(result.largest_ok_input or 0, size)
        else:
            result.first_failure = step
            break
    return result


def sweep_main(argv: Sequence[str]) -> int:
    """`p11tls sweep`: the sweep on the configured module (default: throw-away SoftHSM2)."""
    from harness.runner import MatrixRunner

    parser = argparse.ArgumentParser(prog="p11tls sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="java",
                        help="comma-separated clients (default: java)")
    parser.add_argument("--keys", default="p256", help="comma-separated keys (default: p256)")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS_KIB)),
                        help="padding steps in KiB of extra CA names (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    for option in OPTIONS:
        if option.name.startswith("p11_") and not option.flag and not option.repeatable:
            parser.add_argument("--" + option.name.replace("_", "-"), dest=option.name,
                                help=option.help)
    args = parser.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--steps takes whole KiB numbers, not {args.steps!r}")
    if not steps or min(steps) < 0:
        parser.error("--steps needs one or more sizes >= 0")
    try:
        settings = resolve({o.name: getattr(args, o.name, None) for o in OPTIONS}, {}, os.environ)
        runner = MatrixRunner(settings)
    except HarnessError as exc:
        print(f"p11tls sweep: {exc}", file=sys.stderr)
        return 2
    say = None if args.json else print
    results = []
    try:
        for client in args.clients.split(","):
            for key in args.keys.split(","):
                if say:
                    say(f"{client} {key}, TLS 1.2:")
                results.append(sweep(runner.run, client.strip(), key.strip(), steps, say))
    except HarnessError as exc:
        print(f"p11tls sweep: {exc}", file=sys.stderr)
        return 2
    finally:
        runner.close()
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        for r in results:
            print(r.summary())
    return 0
