"""`p11tls explain LOG [--json]`: read a call log, show what failed and why."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from harness.errors import ConfigError, HarnessError
from harness.explain.explanation import EXCERPT_LINES, Explanation, explain_file
from harness.explain.model import Call


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
        notes.append(f"function inferred from {call.inferred_from}" if call.inferred_from
                     else "inferred from OpenSC internals")
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
    if not e.calls:
        heading = f"{source}: {e.format.title}, no PKCS#11 call in it"
    out = [heading, ""]
    rows = [("#", "line", "call", "mechanism", "input", "rv", "")] if e.calls else []
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
    widths = [max(len(row[col]) for row in rows) for col in range(6)] if rows else []
    for row in rows:
        cells = [row[0].rjust(widths[0]), row[1].rjust(widths[1])]
        cells += [
            row[c].ljust(widths[c]) if c != 4 else row[c].rjust(widths[c]) for c in (2, 3, 4, 5)
        ]
        out.append(("  " + "  ".join(cells) + ("  " + row[6] if row[6] else "")).rstrip())
    if rows:
        out.append("")
    if e.first_failure is None:
        out.append("No PKCS#11 call failed." if e.calls or e.total_calls
                   else "No failing PKCS#11 call in the text.")
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
            where = f"call #{finding.call}" if finding.call is not None else "no call"
            out.append(f"  {n}. [{finding.rule}] {where}{probe}")
            out.extend(wrap.wrap(finding.summary))
            out.extend(wrap.wrap("What to do: " + finding.hint))
    if e.next_steps:
        out.append("")
        out.append("Next, here:")
        steps = textwrap.TextWrapper(width=100, initial_indent="  - ", subsequent_indent="    ",
                                     break_on_hyphens=False, break_long_words=False)
        for step in e.next_steps:
            out.extend(steps.wrap(step))
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
        "records; the format is detected) or any pasted error text (pkcs11-tool, wrapper "
        "exceptions, OpenSSL/NSS/curl errors), show the calls that matter, the first failing "
        "call, what the harness has measured about it, the likely cause with workarounds and "
        "the next commands to run. PINs and key values are masked.",
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
