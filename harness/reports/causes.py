"""Causes, not cells: the failed cases of a run grouped by what explains them.

A night with eight failing cells usually has one to three causes. What the
harness already knows comes first: a case with a known reason (an expected
failure: known_failures.toml, a module's or a profile's outcomes) is grouped
under that reason, apart from the others and after them, never under a
generic rule's advice. For the others, the explanation (the case's first real
finding) gives the cause: the rule and the PKCS#11 names it cites (mechanism,
return code); cases without an explanation are grouped by their failure code.
Each cause is listed once, with the cases it explains and the workaround. No
workaround suggests trying a PIN again unless the failure is a CKR_PIN_* code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.explain.client_side import RULE as NO_CALL_RULE
from harness.explain.next_steps import FACT_RULE
from harness.explain.rules import GENERAL_RULE, JAVA_RULE, RULES
from harness.reports.layout import FAILED, failure_code
from harness.matrix.record import HandshakeRecord

NAMES = re.compile(r"\bCK[MR]_[A-Z0-9_]+\b")
DESCRIPTIONS = {
    **{rule.name: rule.description for rule in RULES},
    GENERAL_RULE: "a failing PKCS#11 call",
    NO_CALL_RULE: "no failing PKCS#11 call: the client failed by itself",
    FACT_RULE: "a failure the harness has measured",
    JAVA_RULE: "mechanisms disabled in the Java SunPKCS11 configuration",
    "tls13-rsa-without-pss": "TLS 1.3 with an RSA key on a token without CKM_RSA_PKCS_PSS",
    "no-raw-ecdsa": "no raw CKM_ECDSA on the token",
    "no-rsa-signing": "no RSA signing mechanism on the token",
    "no-eddsa": "no CKM_EDDSA on the token",
    "no-signature-algorithm": "no common signature algorithm",
    "key-not-found": "the client did not find the key or certificate",
    "certificate": "the certificate, not the signature",
    "login": "the login",
    "no-signing-call": "the handshake failed before any signing call",
}


@dataclass(frozen=True)
class Cause:
    key: str
    title: str  # what went wrong, once for all its cases
    example: str  # the explanation of the first case, as it read there
    workaround: str
    cases: tuple[str, ...]  # case ids
    expected: bool = False  # known failures, listed apart with their known reason


def _first_finding(record: HandshakeRecord) -> dict[str, Any] | None:
    explanation = record.explanation if isinstance(record.explanation, dict) else {}
    findings = [f for f in explanation.get("findings") or () if isinstance(f, dict)]
    real = [f for f in findings if not f.get("harmless")]
    chosen = real or findings
    return chosen[0] if chosen else None


def _first_sentence(text: str) -> str:
    found = re.match(r"(.+?[.:])(\s|$)", text)
    return found.group(1) if found else text


PIN_ADVICE = re.compile(r"(?i)\bPIN\b[^.]*(retry|another try|try again|check)|retry counter")


def _safe(hint: str, codes: Sequence[str]) -> str:
    """No advice to try a PIN again unless the failure is a CKR_PIN_* code."""
    if PIN_ADVICE.search(hint) and not any(c.startswith("CKR_PIN_") for c in codes):
        return ""
    return hint


def failure_causes(records: Sequence[HandshakeRecord]) -> list[Cause]:
    """The causes of the failed cases, the one explaining most cases first;
    the expected failures (known reasons) after the others."""
    groups: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.outcome not in FAILED:
            continue
        finding = _first_finding(record)
        expected = bool(record.expected)
        if expected:
            reason = " ".join(str(record.expected).split())
            key = f"expected {reason}"
            title = f"expected (known failure): {_first_sentence(reason)}"
            example = reason if reason != _first_sentence(reason) else ""
            hint = ""
        elif finding is not None:
            rule = str(finding.get("rule"))
            summary = str(finding.get("summary") or "")
            names = sorted(set(NAMES.findall(summary)))
            key = " ".join([rule, *names])
            title = DESCRIPTIONS.get(rule, rule) + (f" ({', '.join(names)})" if names else "")
            example = _first_sentence(summary)
            hint = _safe(str(finding.get("hint") or ""), names)
        else:
            code = failure_code(record)
            key = f"code {code}"
            title = f"{code} (no explanation in the record)"
            example = " ".join((record.error or code).split())[:300]
            hint = ""
        group = groups.setdefault(key, {"title": title, "example": example, "hint": hint,
                                        "cases": [], "expected": expected})
        group["cases"].append(record.case_id)
    causes = [Cause(key, g["title"], g["example"], g["hint"], tuple(g["cases"]), g["expected"])
              for key, g in groups.items()]
    return sorted(causes, key=lambda c: (c.expected, -len(c.cases), c.key))


def causes_text(causes: Sequence[Cause], *, limit: int = 6) -> list[str]:
    """Plain-text lines: one block per cause (cases shown up to `limit`)."""
    out: list[str] = []
    for n, cause in enumerate(causes, 1):
        shown = ", ".join(cause.cases[:limit]) + (
            f" and {len(cause.cases) - limit} more" if len(cause.cases) > limit else "")
        count = len(cause.cases)
        out.append(f"{n}. {cause.title}: {count} case{'' if count == 1 else 's'} ({shown})")
        if cause.example and cause.example != cause.title:
            out.append(f"   {cause.example}")
        if cause.workaround:
            out.append(f"   Workaround: {cause.workaround}")
    return out
