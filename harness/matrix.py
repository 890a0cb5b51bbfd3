"""The matrix: which handshake cases exist, their ids and markers, and which
are known to fail on the default stack (harness/data/known_failures.toml)."""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError
from harness.keys import KeySpec, Provisioning
from harness.tls import TLSVersion

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KNOWN_FAILURES = Path(__file__).parent / "data" / "known_failures.toml"


@dataclass(frozen=True)
class Case:
    """One handshake: client × key × provisioning × TLS version."""

    client: str
    key: KeySpec
    provisioning: Provisioning
    tls: TLSVersion

    @property
    def case_id(self) -> str:
        return f"{self.client}-{self.key.name}-{self.provisioning.value}-{self.tls.marker}"

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.tls.marker, self.key.algorithm.value, self.provisioning.value,
                self.client.replace("-", "_"))


@dataclass(frozen=True)
class KnownFailure:
    reason: str
    client: str | None = None
    key: str | None = None
    tls: str | None = None
    provisioning: str | None = None

    def matches(self, case: Case) -> bool:
        return all(
            want is None or want == have
            for want, have in ((self.client, case.client), (self.key, case.key.name),
                               (self.tls, case.tls.value),
                               (self.provisioning, case.provisioning.value))
        )


def load_known_failures(path: Path = KNOWN_FAILURES) -> list[KnownFailure]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read known failures {path}: {exc}") from None
    allowed = set(KnownFailure.__dataclass_fields__)
    entries = []
    for i, entry in enumerate(data.get("known", [])):
        unknown = set(entry) - allowed
        if unknown or "reason" not in entry:
            raise ConfigError(
                f"{path}: entry {i + 1} needs 'reason' and only {sorted(allowed)} "
                f"(unknown: {sorted(unknown)})"
            )
        entries.append(KnownFailure(**entry))
    return entries


def expected_failure(case: Case, known: list[KnownFailure]) -> str | None:
    return next((k.reason for k in known if k.matches(case)), None)


def cases(clients: list[str], keys: tuple[KeySpec, ...]) -> list[Case]:
    return [
        Case(client, key, prov, tls)
        for client, key, prov, tls in itertools.product(clients, keys, Provisioning, TLSVersion)
    ]
