"""What each case is expected to do, from data files, and the verdict on a
record: known failures of the default stack, the mechanism each client asks
the token for, and per emulation profile the expected outcome of every case.

Files (TOML, `[[expect]]` entries, first matching entry wins):
  data/known_failures.toml       cases that fail on any module, with the reason
  data/expected_mechanisms.toml  the signing call on the default stack
  data/outcomes/PROFILE.toml     outcome and signing call under a shipped profile

Every fact is keyed to the versions it was measured on: a file's top-level
`[versions]` table (component = range, harness/versions.py) holds for all its
entries, and an entry's own `versions = { ... }` adds to or overrides it;
`[[also_measured_on]]` tables name further releases on which the file's
"no entry: must succeed" rule was measured too (entries measured there carry
their own `versions`). A
fact holds for a case when every component of the case's client is named and
inside its range (the module's components only when named). A case whose
facts were measured on other versions still runs and reports what it saw,
marked "unmeasured on this version"; that is neither a pass of a fact nor a
test failure (a handshake that failed there is an expected failure).

Match keys, each optional (absent = any): clients, keys, tls, provisioning;
sigalgs (the server's forced client schemes; absent = none forced).
Outcome keys: outcome ("ok" or "fail"), reason (required for "fail"), error
(a text the record's error must contain). Signing-call keys: mechanism,
params, parts, parts_min, input_bytes, input_bytes_min, input_bytes_max, rv.
Cases no entry matches must succeed (when the file's versions hold).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.matrix.cases import Case
from harness.matrix.record import HandshakeRecord
from harness.versions import COMPONENTS, Versions, check_range, mismatches

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATA = Path(__file__).parents[1] / "data"
KNOWN_FAILURES = DATA / "known_failures.toml"
EXPECTED_MECHANISMS = DATA / "expected_mechanisms.toml"
OUTCOMES = DATA / "outcomes"
MODULE_OUTCOMES = DATA / "modules"  # per named module (tpm2.toml), like a profile's outcomes

# Mechanisms that take the whole message and hash (or, for EdDSA, sign) it on
# the token: the token's input is then what the server verified.
_COMBINED = re.compile(r"^CKM_(ECDSA_SHA\d+|SHA\d+_RSA_PKCS(_PSS)?|EDDSA)$")


@dataclass(frozen=True)
class Expectation:
    """One [[expect]] entry."""

    clients: tuple[str, ...] | None = None
    keys: tuple[str, ...] | None = None
    tls: tuple[str, ...] | None = None
    provisioning: tuple[str, ...] | None = None
    sigalgs: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # component -> range (file's merged)
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
            # a per-JDK client (java@21) is its base client on another version
            (self.clients is None or case.client.split("@", 1)[0] in self.clients)
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


@dataclass(frozen=True)
class FactTable:
    """The entries of one data file and the versions the file was measured on
    (what "no entry: must succeed" holds for)."""

    entries: tuple[Expectation, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    source: str = ""
    also_measured_on: tuple[dict[str, str], ...] = ()  # further releases of the no-entry rule

    def no_entry_rule_holds(self, versions: Versions) -> bool:
        return any(not mismatches(ranges, versions)
                   for ranges in (self.versions, *self.also_measured_on))

    def __iter__(self) -> Iterator[Expectation]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def _versions(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: versions must be a table such as "
                          "{ libp11 = \"0.4.12\" }")
    unknown = sorted(set(value) - set(COMPONENTS))
    if unknown:
        raise ConfigError(f"{where}: unknown components {unknown} in versions; "
                          f"allowed: {', '.join(COMPONENTS)}")
    try:
        return {name: check_range(spec) for name, spec in value.items()}
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_table(path: Path) -> FactTable:
    """A data file: its [versions] and its [[expect]] entries, each checked."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    unknown_top = sorted(set(data) - {"expect", "versions", "also_measured_on"})
    if unknown_top:
        raise ConfigError(f"{path}: unknown top-level keys {unknown_top}; "
                          "allowed: expect, versions, also_measured_on")
    file_versions = _versions(data.get("versions", {}), f"{path}: [versions]")
    also = data.get("also_measured_on", [])
    if not isinstance(also, list):
        raise ConfigError(f"{path}: also_measured_on must be [[also_measured_on]] tables")
    also_measured_on = tuple(_versions(v, f"{path}: [[also_measured_on]] {i + 1}")
                             for i, v in enumerate(also))
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
        values["versions"] = {**file_versions, **_versions(entry.get("versions", {}), where)}
        result.append(Expectation(**values, source=str(path)))
    return FactTable(tuple(result), file_versions, str(path), also_measured_on)


def load_expectations(path: Path) -> list[Expectation]:
    """The [[expect]] entries of a data file, each checked for its keys."""
    return list(load_table(path))


def has_outcomes(profile: str) -> bool:
    """Whether a shipped outcome table exists for the profile of that name."""
    return (OUTCOMES / f"{profile}.toml").is_file()


def first_match(case: Case, table: FactTable | list[Expectation],
                versions: Versions | None = None) -> Expectation | None:
    """The first entry for the case; with `versions`, the first that holds on them."""
    return next((e for e in table if e.matches(case)
                 and (versions is None or not mismatches(e.versions, versions))), None)


def _unmeasured(what: str, ranges: Mapping[str, str], versions: Versions) -> str:
    return f"unmeasured on this version: {what}: {', '.join(mismatches(ranges, versions))}"


@dataclass(frozen=True)
class Decision:
    """Which fact of a table decides a case on these versions."""

    entry: Expectation | None  # the holding entry, if any
    note: str | None  # "unmeasured on this version: ..." when nothing was measured here


def decide(case: Case, table: FactTable, versions: Versions, what: str) -> Decision:
    """The first entry for the case that holds on `versions`; else the file's
    "no entry" rule where it was measured on these versions; else a note that
    nothing was measured here."""
    candidates = [e for e in table if e.matches(case)]
    for entry in candidates:
        if not mismatches(entry.versions, versions):
            return Decision(entry, None)
    # Entries measured on other releases say nothing here; where the file's
    # "no entry" rule was measured on these versions, it decides.
    if table.no_entry_rule_holds(versions):
        return Decision(None, None)
    ranges = candidates[0].versions if candidates else table.versions
    return Decision(None, _unmeasured(what, ranges, versions))


@dataclass(frozen=True)
class Verdict:
    expected_failure: str | None  # the reason, when the case failed as expected
    problems: list[str]  # why the record is not what was expected
    unmeasured: list[str] = field(default_factory=list)  # facts not measured here
    failed_unmeasured: bool = False  # the handshake failed where no fact was measured

    @property
    def word(self) -> str:
        """pytest's word for the case: passed, failed or xfailed."""
        if self.problems:
            return "failed"
        return "xfailed" if self.expected_failure or self.failed_unmeasured else "passed"


def observer_problems(record: HandshakeRecord) -> list[str]:
    """The token and the server must agree on what was signed: with a combined
    hash-and-sign mechanism the token's input is the signed message itself."""
    sign = record.sign if isinstance(record.sign, dict) else {}
    server = record.signed_bytes
    token = sign.get("input_bytes")
    if (server is None or not isinstance(token, int)
            or not _COMBINED.match(str(sign.get("mechanism") or ""))):
        return []
    if token == server:
        return []
    return [f"the token signed {token} bytes with {sign['mechanism']}, but the server's "
            f"CertificateVerify covers {server} bytes"]


class CaseExpectations:
    """Everything a run expects: known failures always; the default stack's
    mechanisms when `check_mechanisms`; a shipped profile's outcome table."""

    def __init__(self, *, profile: str | None = None, check_mechanisms: bool = False,
                 module: str | None = None) -> None:
        self.known = load_table(KNOWN_FAILURES)
        self.check_mechanisms = check_mechanisms
        self.mechanisms = load_table(EXPECTED_MECHANISMS) if check_mechanisms else FactTable()
        outcome_file = (OUTCOMES / f"{profile}.toml" if profile
                        else MODULE_OUTCOMES / f"{module}.toml" if module else None)
        self.outcomes = (load_table(outcome_file)
                         if outcome_file is not None and outcome_file.is_file() else None)

    def outcome_decision(self, case: Case, versions: Versions) -> Decision:
        """The entry that decides the case's outcome (profile first, then the
        known failures); with none, the file that says "must succeed" (the
        profile's, else known_failures.toml) must have been measured here."""
        for table in (self.outcomes, self.known):
            if table is not None and any(e.matches(case) for e in table):
                return decide(case, table, versions, "outcome")
        return decide(case, self.outcomes or self.known, versions, "outcome")

    def failure_reason(self, case: Case, versions: Versions) -> str | None:
        entry = self.outcome_decision(case, versions).entry
        return entry.reason if entry is not None and entry.outcome == "fail" else None

    def verdict(self, case: Case, record: HandshakeRecord, versions: Versions) -> Verdict:
        """Whether the record is what the facts measured on `versions` say."""
        outcome = self.outcome_decision(case, versions)
        entry = outcome.entry
        problems = observer_problems(record)
        if entry is not None and entry.outcome == "fail":
            if record.outcome == "ok":
                return Verdict(None, problems + [f"passed, but expected to fail: {entry.reason}"])
            if entry.error and entry.error not in (record.error or ""):
                problems.append(f"failed with {record.error!r}, expected {entry.error!r}")
            problems += entry.sign_problems(record.sign)
            return Verdict(entry.reason if not problems else None, problems)
        notes = [outcome.note] if outcome.note else []
        sign_entry = entry if entry is not None and entry.checks_sign else None
        # Under a profile whose outcome was not measured on these versions, the
        # default stack's signing calls say nothing: the profile changes them.
        profile_unmeasured = self.outcomes is not None and outcome.note is not None
        if sign_entry is None and self.check_mechanisms and not profile_unmeasured:
            sign = decide(case, self.mechanisms, versions, "signing call")
            sign_entry = sign.entry
            notes += [sign.note] if sign.note and sign.note not in notes else []
        if record.outcome == "error":  # the harness could not run the case
            return Verdict(None, problems + [f"harness error: {record.error}"], notes)
        if record.outcome != "ok":
            if outcome.note:  # no outcome measured here: what it saw, not a test failure
                return Verdict(None, problems, notes, failed_unmeasured=True)
            return Verdict(None, problems + [f"handshake failed: {record.error}"], notes)
        if sign_entry is not None:
            problems += sign_entry.sign_problems(record.sign)
        if record.peer is not None:  # a peer of the client's own: it logs less
            if record.negotiated_version is None:
                problems.append(f"{record.peer} did not report the negotiated version")
            if not (record.sign or {}).get("mechanism"):
                problems.append("no signing call recorded for the CertificateVerify")
        elif not record.signature_scheme:
            problems.append("the server saw no CertificateVerify")
        elif record.negotiated_version is None or record.signed_bytes is None:
            problems.append("the server did not report the negotiated version and the "
                            "bytes the CertificateVerify covers")
        return Verdict(None, problems, notes)

    def judge(self, case: Case, record: HandshakeRecord, versions: Versions) -> HandshakeRecord:
        """Put the verdict into the record, with the versions it was judged on."""
        record.versions = dict(versions)
        if record.outcome == "skip":
            record.verdict, record.problems, record.unmeasured = "skipped", [], []
            return record
        verdict = self.verdict(case, record, versions)
        record.expected = self.failure_reason(case, versions)
        record.verdict, record.problems = verdict.word, list(verdict.problems)
        record.unmeasured = list(verdict.unmeasured)
        return record
