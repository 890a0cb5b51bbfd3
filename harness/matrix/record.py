"""HandshakeRecord: what one matrix case did, as written to reports/results.json."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Outcome(enum.Enum):
    OK = "ok"  # the server accepted the client certificate
    FAIL = "fail"  # the system under test misbehaved: the handshake failed
    ERROR = "error"  # the harness itself broke (set-up, provisioning)
    SKIP = "skip"  # not run here (client missing, unsupported key)


# A token without C_CreateObject for keys (OpenSC's sc-hsm driver): a property
# of the token; its import cases are skipped with this reason, calls kept.
IMPORT_UNSUPPORTED = "import not supported by the token"


@dataclass
class HandshakeRecord:
    """One case of the matrix. Field names are the results.json schema."""

    case_id: str
    client: str
    key: str
    provisioning: str
    tls: str  # "1.2" / "1.3" as requested
    outcome: str  # Outcome value
    client_sigalgs: str | None = None  # client signature schemes the server allowed
    padding_bytes: int | None = None  # sweep mode: bytes of padding CA names the server sent
    module: dict[str, Any] = field(default_factory=dict)  # path, library, token label/model
    profile: str | None = None
    client_version: str | None = None
    negotiated_version: str | None = None
    cipher: str | None = None
    signature_scheme: str | None = None  # IANA name as the server saw it
    # The client's own peer when it is not the harness's server (openvpn, hostapd)
    peer: str | None = None
    client_subject: str | None = None  # RFC 4514, e.g. "CN=p11tls-..."
    signed_bytes: int | None = None  # bytes the client's CertificateVerify signs (server's count)
    error: str | None = None  # client message or CKR code
    expected: str | None = None  # reason when this case is a known failure
    duration_s: float | None = None
    sign: dict[str, Any] | None = None  # summary of the CertificateVerify signing call
    calls: list[dict[str, Any]] | None = None  # PKCS#11 calls made for this handshake
    # how the harness made the case's key: its C_CreateObject / C_GenerateKeyPair
    # calls, each {"fn", "rv"} (None: not recorded, --p11-no-record)
    provisioned: list[dict[str, Any]] | None = None
    explanation: dict[str, Any] | None = None  # `p11tls explain` findings for a failure
    logs: dict[str, str] = field(default_factory=dict)  # name -> path of the case's log
    # -- the verdict (harness/verdict/expectations.py; the pytest plugin reconciles it) --
    versions: dict[str, str | None] = field(default_factory=dict)  # component -> version here
    verdict: str | None = None  # pytest's word: passed / failed / xfailed / skipped
    problems: list[str] = field(default_factory=list)  # why the case failed its expectations
    unmeasured: list[str] = field(default_factory=list)  # facts not measured on these versions
    # -- what harness/verdict/predict.py expected from the token's mechanisms (and profile) --
    predicted: dict[str, Any] | None = None  # mechanism, bytes_min/max, outcome, why, source
    prediction_matched: bool | None = None  # None: not compared (skipped, harness error)

    @property
    def row_label(self) -> str:
        """Provisioning, plus the server's restriction when there was one."""
        label = self.provisioning
        if self.client_sigalgs:
            label += f", server forces {self.client_sigalgs}"
        if self.padding_bytes is not None:
            label += f", +{self.padding_bytes} B of CA names"
        return label

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


VERDICTS = ("passed", "failed", "xfailed", "skipped")


def verdict_of(record: HandshakeRecord) -> str:
    """The case's verdict; for a record that carries none (written before
    verdicts were recorded, or by a sweep) the one its outcome implies."""
    if record.verdict in VERDICTS:
        return record.verdict
    if record.outcome == Outcome.SKIP.value:
        return "skipped"
    if record.outcome == Outcome.OK.value:
        return "failed" if record.expected else "passed"
    return "xfailed" if record.expected else "failed"


def problems_of(record: HandshakeRecord) -> list[str]:
    """Why a case failed: its problems, else what its outcome says."""
    if record.problems:
        return [str(p) for p in record.problems]
    if verdict_of(record) != "failed":
        return []
    if record.outcome == Outcome.OK.value:
        return [f"passed, but listed as a known failure: {record.expected}"
                if record.expected else "failed"]
    return [f"handshake failed: {record.error}" if record.error else "handshake failed"]

