"""`p11tls explain LOG [--json]`: read a call log, show what failed and why."""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from harness.errors import ConfigError, HarnessError
from harness import masking
from harness.explain import (
    detect,
    java_log,
    nss_log,
    opensc,
    p11kit,
    pkcs11_logger,
    records,
    rules,
    spy,
    tpm2_log,
)
from harness.explain.model import Call, Finding, LogFormat, ParsedLog, operation_of

PARSERS = {
    LogFormat.HARNESS: records.parse,
    LogFormat.PKCS11_SPY: spy.parse,
    LogFormat.P11_KIT: p11kit.parse,
    LogFormat.PKCS11_LOGGER: pkcs11_logger.parse,
    LogFormat.OPENSC_DEBUG: opensc.parse,
    LogFormat.TPM2_PKCS11: tpm2_log.parse,
    LogFormat.NSS_DEBUG: nss_log.parse,
}
MATTER = {"C_CreateObject", "C_Login", "C_GenerateKeyPair", "C_GenerateKey"}
EXCERPT_LINES = 24


def parse_log(lines: list[str], fmt: LogFormat | None = None) -> ParsedLog:
    """Parse log lines in the given format, or the detected one."""
    if fmt is None:
        fmt = detect.detect_format(lines)
        if fmt is None:
            raise ConfigError(f"unknown log format: no line looks like a {detect.FORMAT_NAMES} log")
    return PARSERS[fmt](lines)


def parse_file(path: Path, fmt: LogFormat | None = None) -> ParsedLog:
    """Read and parse a log file; a ConfigError (one line) if it is not a call log."""
    lines = detect.read_log(path)
    try:
        parsed = parse_log(lines, fmt)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not parsed.calls:
        raise ConfigError(
            f"{path}: no PKCS#11 calls found (read as {parsed.format.title}): "
            f"expected a {detect.FORMAT_NAMES} log"
        )
    return parsed


@dataclass(frozen=True)
class Explanation:
    """What `p11tls explain` reports. Indices point into `calls`."""

    format: LogFormat
    calls: tuple[Call, ...]  # the calls that matter, plus every failing or cited call
    first_failure: int | None
    findings: tuple[Finding, ...]
    total_calls: int
    # (line number, text) of the first failing call in the log, PINs and keys masked
    failure_excerpt: tuple[tuple[int, str], ...] = ()
    problems: tuple[str, ...] = ()  # what the reader could not read (torn lines, gaps)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format.value,
            "calls": [
                {"fn": c.fn, "mechanism": c.mechanism, "input_bytes": c.input_bytes, "rv": c.rv}
                for c in self.calls
            ],
            "first_failure": self.first_failure,
            "findings": [
                {"rule": f.rule, "summary": f.summary, "call": f.call, "hint": f.hint,
                 "harmless": f.harmless}
                for f in self.findings
            ],
            "problems": list(self.problems),
        }


def matters(call: Call) -> bool:
    """init/sign/decrypt/create/login/generate calls."""
    if call.fn in MATTER:
        return True
    kind = operation_of(call.fn)
    return kind is not None and (kind[1] == "init" or kind[0] in ("Sign", "Decrypt"))


PIN_FLAG = re.compile(r"\bCKF_USER_PIN_(COUNT_LOW|FINAL_TRY|LOCKED)\b")


def _with_pin_flags(call: Call, lines: Sequence[str]) -> Call:
    """C_GetTokenInfo's PIN flags, as any text format prints them by name."""
    if call.fn != "C_GetTokenInfo" or call.pin_flags or not lines:
        return call
    text = "\n".join(lines[call.line - 1 : call.end_line])
    found = tuple(dict.fromkeys("CKF_USER_PIN_" + m for m in PIN_FLAG.findall(text)))
    return call.replace(pin_flags=found) if found else call


def explain(parsed: ParsedLog) -> Explanation:
    """Diagnose a parsed log."""
    calls = [_with_pin_flags(call, parsed.lines) for call in parsed.calls]
    findings = rules.diagnose(calls, parsed.lines)
    first = rules.first_failure(calls)
    disabled = java_log.disabled_mechanisms(parsed.lines)
    if disabled and calls:
        summary, hint = java_log.disabled_summary(disabled)
        at = first if first is not None else 0
        findings.append(Finding(rules.JAVA_RULE, summary, at, hint))
    cited = {f.call for f in findings}
    if first is not None:
        cited.add(first)
    shown = [i for i, call in enumerate(calls) if matters(call) or rules.failed(call) or i in cited]
    position = {old: new for new, old in enumerate(shown)}
    excerpt: tuple[tuple[int, str], ...] = ()
    if first is not None:
        start, end = calls[first].line, calls[first].end_line
        masked = masking.mask_lines(parsed.lines[start - 1 : end], parsed.format)
        excerpt = tuple(zip(range(start, end + 1), masked))
    return Explanation(
        format=parsed.format,
        calls=tuple(calls[i] for i in shown),
        first_failure=position[first] if first is not None else None,
        findings=tuple(
            Finding(rule=f.rule, summary=f.summary, call=position[f.call], hint=f.hint,
                    harmless=f.harmless)
            for f in findings
        ),
        total_calls=len(calls),
        failure_excerpt=excerpt,
        problems=parsed.problems + _cut_inside(calls),
    )


def _cut_inside(calls: Sequence[Call]) -> tuple[str, ...]:
    """A log that ends inside a call (no return value): say so, with what it carried."""
    if not calls:
        return ()
    last = calls[-1]
    if last.rv is not None or last.fn in rules.CLEANUP or last.reader_error or last.inferred:
        return ()
    what = [m for m in (last.mechanism,) if m]
    size = last.operation_bytes or last.input_bytes
    if size is not None:
        what.append(f"{size} bytes so far")
    return (f"the log ends inside {last.fn}" + (f" ({', '.join(what)})" if what else "")
            + f" at line {last.end_line}: its return value is not in the log (cut, or the "
            "process died or hung there)",)


def explain_file(path: Path) -> Explanation:
    return explain(parse_file(path))


# --- text rendering -------------------------------------------------------------


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n}B"


def _short(mechanism: str | None) -> str:
    return mechanism or "-"


def _notes(call: Call) -> str:
    notes = []
    if call.apdu_bytes is not None:
        notes.append(f"APDU {call.apdu_bytes}B")
    if call.reader_error:
        notes.append(call.reader_error)
    if call.object_class and call.fn == "C_CreateObject":
        notes.append(call.object_class)
    if call.fn == "C_Login" and call.user_type:
        notes.append(call.user_type)
    if call.curve:
        notes.append(call.curve)
    if call.inferred:
        notes.append("inferred from OpenSC internals")
    return ", ".join(notes)


def _excerpt(explanation: Explanation) -> list[str]:
    numbered = [f"  {number:>6} | {text}" for number, text in explanation.failure_excerpt]
    if len(numbered) > EXCERPT_LINES:
        half = EXCERPT_LINES // 2
        skipped = len(numbered) - 2 * half
        numbered = numbered[:half] + [f"  {'':>6} | … {skipped} lines …"] + numbered[-half:]
    return numbered


def render_text(explanation: Explanation, source: str) -> str:
    e = explanation
    heading = (
        f"{source}: {e.format.title}, {e.total_calls} PKCS#11 "
        f"call{'' if e.total_calls == 1 else 's'}, "
        f"{len(e.calls)} shown (init/sign/decrypt/create/login/generate and failures)"
    )
    out = [heading, ""]
    rows = [("#", "line", "call", "mechanism", "input", "rv", "")]
    for index, call in enumerate(e.calls):
        rows.append(
            (
                str(index),
                str(call.line),
                call.fn,
                _short(call.mechanism),
                _size(call.input_bytes),
                call.rv or "?",
                _notes(call),
            )
        )
    widths = [max(len(row[col]) for row in rows) for col in range(6)]
    for row in rows:
        cells = [row[0].rjust(widths[0]), row[1].rjust(widths[1])]
        cells += [
            row[c].ljust(widths[c]) if c != 4 else row[c].rjust(widths[c]) for c in (2, 3, 4, 5)
        ]
        out.append(("  " + "  ".join(cells) + ("  " + row[6] if row[6] else "")).rstrip())
    out.append("")
    if e.first_failure is None:
        out.append("No call failed.")
    else:
        call = e.calls[e.first_failure]
        out.append(
            f"First failing call: #{e.first_failure} {call.fn}"
            + (f" {call.mechanism}" if call.mechanism else "")
            + " -> "
            + (call.rv or (call.reader_error and "reader error") or "no return value in the log")
            + (
                f" (log line {call.line}):"
                if call.line == call.end_line
                else f" (log lines {call.line}-{call.end_line}):"
            )
        )
        out.extend(_excerpt(e))
    out.append("")
    for problem in e.problems:
        out.append(f"Log problem: {problem}")
    if e.problems:
        out.append("")
    if not e.findings:
        out.append("Findings: none (no call failed).")
    else:
        out.append(f"Findings ({len(e.findings)}):")
        wrap = textwrap.TextWrapper(
            width=100, initial_indent="     ", subsequent_indent="     ", break_on_hyphens=False
        )
        for n, finding in enumerate(e.findings, start=1):
            probe = " (probably harmless: the client went on normally)" if finding.harmless else ""
            out.append(f"  {n}. [{finding.rule}] call #{finding.call}{probe}")
            out.extend(wrap.wrap(finding.summary))
            out.extend(wrap.wrap("What to do: " + finding.hint))
    return "\n".join(out) + "\n"


# --- command line ---------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ConfigError line instead of argparse's usage dump."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (usage: p11tls explain LOG [--json])")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="p11tls explain",
        description="Read a PKCS#11 call log (pkcs11-spy, p11-kit log-calls, pkcs11-logger, "
        "OpenSC debug log, tpm2-pkcs11's log, NSS's module debug log or p11tls interposer "
        "records; the format is detected), show the "
        "calls that matter, the first failing call and the likely cause with workarounds. "
        "PINs and key values in the log are masked.",
    )
    parser.add_argument("log", type=Path, help="the log file, or - for standard input")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def explain_main(argv: Sequence[str]) -> int:
    """`p11tls explain LOG [--json]`; argv is what follows the subcommand name.

    Exit status: 0 when the log was read and explained (whether or not it
    shows a failure), 2 for a bad command line or a file that is not a call
    log (one line on stderr), 3 if the explainer itself broke.
    """
    try:
        args = build_parser().parse_args(list(argv))
    except HarnessError as exc:
        print(f"p11tls explain: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        explanation = explain_file(args.log)
    except HarnessError as exc:
        print(f"p11tls explain: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug here must still be one line, not a traceback
        print(
            f"p11tls explain: internal error while reading {args.log}: "
            f"{type(exc).__name__}: {exc} (please report this with the log)",
            file=sys.stderr,
        )
        return 3
    if args.json:
        print(json.dumps(explanation.to_json(), indent=2))
    else:
        sys.stdout.write(render_text(explanation, str(args.log)))
    return 0
