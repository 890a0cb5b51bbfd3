"""What each case is expected to do, from data files, and the verdict on a
record: known failures of the default stack, the mechanism each client asks
the token for, and per emulation profile the expected outcome of every case.

Files (TOML, `[[expect]]` entries, first matching entry wins):
  data/known_failures.toml       cases that fail on any module, with the reason
  data/expected_mechanisms.toml  the signing call on the default stack
  data/outcomes/PROFILE.toml     outcome and signing call under a shipped profile

Match keys, each optional (absent = any): clients, keys, tls, provisioning;
sigalgs (the server's forced client schemes; absent = none forced).
Outcome keys: outcome ("ok" or "fail"), reason (required for "fail"), error
(a text the record's error must contain). Signing-call keys: mechanism,
params, parts, parts_min, input_bytes, input_bytes_min, input_bytes_max, rv.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.matrix import Case
from harness.record import HandshakeRecord

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATA = Path(__file__).parent / "data"
KNOWN_FAILURES = DATA / "known_failures.toml"
EXPECTED_MECHANISMS = DATA / "expected_mechanisms.toml"
OUTCOMES = DATA / "outcomes"


@dataclass(frozen=True)
class Expectation:
    """One [[expect]] entry."""

    clients: tuple[str, ...] | None = None
    keys: tuple[str, ...] | None = None
    tls: tuple[str, ...] | None = None
    provisioning: tuple[str, ...] | None = None
    sigalgs: str | None = None
    outcome: str = "ok"
    reason: str | None = None
    error: str | None = None
    mechanism: str | None = None
    params: dict[str, Any] | None = None
    parts: int | None = None
    parts_min: int | None = None
    input_bytes: int | None = None
    input_bytes_min: int | None = None
    input_bytes_max: int | None = None
    rv: str | None = None
    source: str = field(default="", compare=False)

    def matches(self, case: Case) -> bool:
        return (
            (self.clients is None or case.client in self.clients)
            and (self.keys is None or case.key.name in self.keys)
            and (self.tls is None or case.tls.value in self.tls)
            and (self.provisioning is None or case.provisioning.value in self.provisioning)
            and self.sigalgs == case.client_sigalgs
        )

    @property
    def checks_sign(self) -> bool:
        return self.mechanism is not None

    def sign_problems(self, sign: dict[str, Any] | None) -> list[str]:
        """How the recorded signing operation differs from this entry."""
        if not self.checks_sign:
            return []
        if not sign:
            return [f"no signing call recorded; expected {self.mechanism}"]
        found: list[str] = []
        have_parts, have_bytes = sign.get("parts"), sign.get("input_bytes")

        def differs(name: str, want: object, have: object) -> None:
            if want != have:
                found.append(f"{name}: expected {want!r}, token saw {have!r}")

        def below(name: str, low: int | None, high: int | None, have: object) -> None:
            if (low is not None or high is not None) and not (
                isinstance(have, int) and (low is None or have >= low)
                and (high is None or have <= high)
            ):
                bounds = " and ".join(f"{op} {v}" for op, v in ((">=", low), ("<=", high))
                                      if v is not None)
                found.append(f"{name}: expected {bounds}, token saw {have!r}")

        differs("mechanism", self.mechanism, sign.get("mechanism"))
        differs("params", self.params, sign.get("params"))
        if self.parts is not None:
            differs("parts", self.parts, have_parts)
        below("parts", self.parts_min, None, have_parts)
        if self.input_bytes is not None:
            differs("input_bytes", self.input_bytes, have_bytes)
        below("input_bytes", self.input_bytes_min, self.input_bytes_max, have_bytes)
        differs("rv", self.rv or ("CKR_OK" if self.outcome == "ok" else self.error), sign.get("rv"))
        return found


def load_expectations(path: Path) -> list[Expectation]:
    """The [[expect]] entries of a data file, each checked for its keys."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    allowed = {f.name for f in fields(Expectation)} - {"source"}
    result = []
    for i, entry in enumerate(data.get("expect", [])):
        unknown = set(entry) - allowed
        where = f"{path}: [[expect]] entry {i + 1}"
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        if entry.get("outcome", "ok") not in ("ok", "fail"):
            raise ConfigError(f"{where}: outcome must be 'ok' or 'fail', not {entry['outcome']!r}")
        if entry.get("outcome") == "fail" and not entry.get("reason"):
            raise ConfigError(f"{where}: an expected failure needs a 'reason'")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in entry.items()}
        result.append(Expectation(**values, source=str(path)))
    return result


def has_outcomes(profile: str) -> bool:
    """Whether a shipped outcome table exists for the profile of that name."""
    return (OUTCOMES / f"{profile}.toml").is_file()


def first_match(case: Case, table: list[Expectation]) -> Expectation | None:
    return next((e for e in table if e.matches(case)), None)


class ExpectedFailure(Exception):
    """Raised by a matrix case that failed exactly as its data file says; the
    plugin marks such cases xfail(raises=ExpectedFailure, strict=True), so any
    other failure, or a pass, still fails the run."""


@dataclass(frozen=True)
class Verdict:
    expected_failure: str | None  # the reason, when the case failed as expected
    problems: list[str]  # why the record is not what was expected


class CaseExpectations:
    """Everything a run expects: known failures always; the default stack's
    mechanisms when `check_mechanisms`; a shipped profile's outcome table."""

    def __init__(self, *, profile: str | None = None, check_mechanisms: bool = False) -> None:
        self.known = load_expectations(KNOWN_FAILURES)
        self.mechanisms = load_expectations(EXPECTED_MECHANISMS) if check_mechanisms else []
        outcome_file = OUTCOMES / f"{profile}.toml" if profile else None
        self.outcomes = (load_expectations(outcome_file)
                         if outcome_file is not None and outcome_file.is_file() else [])

    def entry(self, case: Case) -> Expectation | None:
        """The entry that decides the case's outcome (profile first), if any."""
        return first_match(case, self.outcomes) or first_match(case, self.known)

    def failure_reason(self, case: Case) -> str | None:
        entry = self.entry(case)
        return entry.reason if entry is not None and entry.outcome == "fail" else None

    def verdict(self, case: Case, record: HandshakeRecord) -> Verdict:
        entry = self.entry(case)
        sign_entry = entry if entry is not None and entry.checks_sign else first_match(
            case, self.mechanisms)
        if entry is None or entry.outcome == "ok":
            problems = [] if record.outcome == "ok" else [f"handshake failed: {record.error}"]
            if record.outcome == "ok" and sign_entry is not None:
                problems += sign_entry.sign_problems(record.sign)
            return Verdict(None, problems)
        if record.outcome == "ok":
            return Verdict(None, [f"passed, but expected to fail: {entry.reason}"])
        problems = []
        if entry.error and entry.error not in (record.error or ""):
            problems.append(f"failed with {record.error!r}, expected {entry.error!r}")
        problems += entry.sign_problems(record.sign)
        return Verdict(entry.reason if not problems else None, problems)
