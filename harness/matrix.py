"""The matrix: which handshake cases exist, their ids and markers, and which
are known to fail on the default stack (harness/data/known_failures.toml)."""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.keys import Algorithm, KeySpec, Provisioning
from harness.tls import TLSVersion

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KNOWN_FAILURES = Path(__file__).parent / "data" / "known_failures.toml"
EXPECTED_MECHANISMS = Path(__file__).parent / "data" / "expected_mechanisms.toml"
# The server restriction the matrix adds for RSA keys in TLS 1.2.
FORCED_RSA_PKCS1 = "rsa_pkcs1_sha256"


@dataclass(frozen=True)
class Case:
    """One handshake: client × key × provisioning × TLS version."""

    client: str
    key: KeySpec
    provisioning: Provisioning
    tls: TLSVersion
    client_sigalgs: str | None = None  # the server allows only these client schemes

    @property
    def case_id(self) -> str:
        base = f"{self.client}-{self.key.name}-{self.provisioning.value}-{self.tls.marker}"
        return f"{base}-{self.client_sigalgs}" if self.client_sigalgs else base

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


def _entries(path: Path, table: str, allowed: set[str], required: set[str]) -> list[dict[str, Any]]:
    """The [[table]] entries of a data file, each checked for its keys."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    entries = data.get(table, [])
    for i, entry in enumerate(entries):
        unknown, missing = set(entry) - allowed, required - set(entry)
        if unknown or missing:
            raise ConfigError(
                f"{path}: [[{table}]] entry {i + 1}: unknown keys {sorted(unknown)}, missing "
                f"{sorted(missing)}; allowed: {', '.join(sorted(allowed))}"
            )
    return list(entries)


def load_known_failures(path: Path = KNOWN_FAILURES) -> list[KnownFailure]:
    allowed = set(KnownFailure.__dataclass_fields__)
    return [KnownFailure(**e) for e in _entries(path, "known", allowed, {"reason"})]


@dataclass(frozen=True)
class SignExpectation:
    """What the CertificateVerify signing call of matching cases must look like."""

    mechanism: str
    clients: tuple[str, ...] | None = None
    keys: tuple[str, ...] | None = None
    tls: tuple[str, ...] | None = None
    sigalgs: str | None = None
    params: dict[str, Any] | None = None
    parts: int | None = None
    input_bytes: int | None = None
    input_bytes_min: int | None = None

    def matches(self, case: Case) -> bool:
        return (
            (self.clients is None or case.client in self.clients)
            and (self.keys is None or case.key.name in self.keys)
            and (self.tls is None or case.tls.value in self.tls)
            and self.sigalgs == case.client_sigalgs
        )

    def problems(self, sign: dict[str, Any] | None) -> list[str]:
        """What differs between the recorded signing call and this expectation."""
        if not sign:
            return [f"no signing call recorded; expected {self.mechanism}"]
        found: list[str] = []

        def differs(name: str, want: object, have: object) -> None:
            if want != have:
                found.append(f"{name}: expected {want!r}, token saw {have!r}")

        differs("mechanism", self.mechanism, sign.get("mechanism"))
        differs("params", self.params, sign.get("params"))
        if self.parts is not None:
            differs("parts", self.parts, sign.get("parts"))
        if self.input_bytes is not None:
            differs("input_bytes", self.input_bytes, sign.get("input_bytes"))
        have = sign.get("input_bytes")
        if self.input_bytes_min is not None and not (isinstance(have, int)
                                                     and have >= self.input_bytes_min):
            found.append(f"input_bytes: expected >= {self.input_bytes_min}, token saw {have!r}")
        differs("rv", "CKR_OK", sign.get("rv"))
        return found


def load_sign_expectations(path: Path = EXPECTED_MECHANISMS) -> list[SignExpectation]:
    fields = SignExpectation.__dataclass_fields__
    result = []
    for entry in _entries(path, "expect", set(fields), {"mechanism"}):
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
        result.append(SignExpectation(**values))
    return result


def sign_expectation(case: Case, expectations: list[SignExpectation]) -> SignExpectation | None:
    """The first expectation that matches the case (file order), or None."""
    return next((e for e in expectations if e.matches(case)), None)


def expected_failure(case: Case, known: list[KnownFailure]) -> str | None:
    return next((k.reason for k in known if k.matches(case)), None)


def cases(clients: list[str], keys: tuple[KeySpec, ...]) -> list[Case]:
    """Every client × key × provisioning × TLS version, then for RSA keys the
    TLS 1.2 cases with the server forcing rsa_pkcs1_sha256."""
    plain = [
        Case(client, key, prov, tls)
        for client, key, prov, tls in itertools.product(clients, keys, Provisioning, TLSVersion)
    ]
    forced = [
        Case(client, key, Provisioning.GENERATE, TLSVersion.TLS12, FORCED_RSA_PKCS1)
        for client, key in itertools.product(clients, keys)
        if key.algorithm is Algorithm.RSA
    ]
    return plain + forced
