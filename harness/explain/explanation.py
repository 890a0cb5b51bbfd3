"""The explain API: parse a call log (any known format) and explain its first failure.

`parse_log`, `parse_file`, `explain`, `explain_file` and `Explanation`; the
text rendering and the `p11tls explain` command live in harness.commands.explain.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.explain import client_side, masking, next_steps, rules
from harness.explain.context import context_of
from harness.explain.formats import (
    detect,
    java_log,
    nss_log,
    opensc,
    p11kit,
    pasted,
    pkcs11_logger,
    spy,
    tpm2_log,
)
from harness.explain.formats import interposer_records as records
from harness.explain.model import Call, Finding, LogFormat, ParsedLog, operation_of

PARSERS = {
    LogFormat.HARNESS: records.parse,
    LogFormat.PKCS11_SPY: spy.parse,
    LogFormat.P11_KIT: p11kit.parse,
    LogFormat.PKCS11_LOGGER: pkcs11_logger.parse,
    LogFormat.OPENSC_DEBUG: opensc.parse,
    LogFormat.TPM2_PKCS11: tpm2_log.parse,
    LogFormat.NSS_DEBUG: nss_log.parse,
    LogFormat.PASTED: pasted.parse,
}
MATTER = {"C_CreateObject", "C_Login", "C_GenerateKeyPair", "C_GenerateKey"}
EXCERPT_LINES = 24


def parse_log(lines: list[str], fmt: LogFormat | None = None) -> ParsedLog:
    """Parse log lines in the given format, or the detected one; text in no
    structured format (or one whose reader finds no call) is read as pasted text."""
    if fmt is not None:
        return PARSERS[fmt](lines)
    found = detect.detect_format(lines)
    if found is not None:
        parsed = PARSERS[found](lines)
        if parsed.calls:
            return parsed
    parsed = pasted.parse(lines)
    if parsed.calls or parsed.client_errors:
        return parsed
    tool, capture = pasted.source_of("\n".join(lines[: detect.SAMPLE_LINES]))
    raise ConfigError(
        f"unknown log format: no PKCS#11 call, return code or TLS error in it (not a "
        f"{detect.FORMAT_NAMES} log nor an error message); it seems to come from {tool}: "
        f"{capture}"
    )


def parse_file(path: Path, fmt: LogFormat | None = None) -> ParsedLog:
    """Read and parse a log file; a ConfigError (one line) if it is not a call log."""
    lines, note = detect.read_log_window(path)
    try:
        parsed = parse_log(lines, fmt)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if note:
        parsed = dataclasses.replace(parsed, problems=(note, *parsed.problems))
    if not parsed.calls and not parsed.client_errors:
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
    next_steps: tuple[str, ...] = ()  # what to run or capture next, here

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format.value,
            "calls": [
                {"fn": c.fn, "mechanism": c.mechanism, "input_bytes": c.input_bytes, "rv": c.rv,
                 **({"inferred_from": c.inferred_from} if c.inferred_from else {})}
                for c in self.calls
            ],
            "first_failure": self.first_failure,
            "findings": [
                {"rule": f.rule, "summary": f.summary, "call": f.call, "hint": f.hint,
                 "harmless": f.harmless}
                for f in self.findings
            ],
            "problems": list(self.problems),
            "next_steps": list(self.next_steps),
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
    if first is None:
        findings += _last_probe(calls)
    context = context_of(parsed.lines, calls)
    if not calls and parsed.client_errors:
        summary, hint = client_side.finding(parsed.client_errors)
        findings.append(Finding(client_side.RULE, summary, None, hint))
    failing = calls[first] if first is not None else None
    findings[:0] = next_steps.fact_findings(failing, first, context, parsed.lines)
    cited = {f.call for f in findings if f.call is not None}
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
            Finding(rule=f.rule, summary=f.summary,
                    call=position[f.call] if f.call is not None else None, hint=f.hint,
                    harmless=f.harmless)
            for f in findings
        ),
        total_calls=len(calls),
        failure_excerpt=excerpt,
        problems=parsed.problems + _cut_inside(calls),
        next_steps=next_steps.next_steps(parsed.format, failing, context, parsed.lines),
    )


# Probe results that are normal, but the last word before a client gives up
# when nothing useful follows them (the token lacks the mechanism or interface).
TELLING_PROBES = {
    "C_GetMechanismInfo": "the token does not offer this mechanism",
    "C_GetInterface": "the module has no such interface (a PKCS#11 3.0 client on a 2.40 "
                      "module falls back to C_GetFunctionList)",
    "C_GetTokenInfo": "no token in the slot",
}
PROBE_RULE = "probe-only"


def _last_probe(calls: Sequence[Call]) -> list[Finding]:
    """No call failed in a way that matters: if a telling probe failed and no
    operation succeeded after it, say so (harmless; it may be why the client stopped)."""
    for i in range(len(calls) - 1, -1, -1):
        call = calls[i]
        if call.fn in TELLING_PROBES and call.rv not in (None, "CKR_OK", "CKR_BUFFER_TOO_SMALL"):
            if any(c.ok and c.fn in rules.PROGRESS for c in calls[i + 1:]):
                return []
            what = f" {call.mechanism}" if call.mechanism else ""
            return [Finding(PROBE_RULE, (
                f"No call failed in a way that matters, but the last probe did: {call.fn}{what} "
                f"returned {call.rv} ({TELLING_PROBES[call.fn]}) and no operation succeeded "
                "after it. If the client failed, this may be why it stopped."), i,
                "Compare with what the client needs (`pkcs11-tool -M` lists the token's "
                "mechanisms); a pkcs11-spy log of the client's whole run shows what it tried "
                "next.", harmless=True)]
    return []


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
