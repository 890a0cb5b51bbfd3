"""HandshakeRecord: what one matrix case did, as written to reports/results.json."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class Outcome(enum.Enum):
    OK = "ok"  # the server accepted the client certificate
    FAIL = "fail"  # the system under test misbehaved: the handshake failed
    ERROR = "error"  # the harness itself broke (set-up, provisioning)
    SKIP = "skip"  # not run here (client missing, unsupported key)


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
    client_subject: str | None = None
    error: str | None = None  # client message or CKR code
    expected: str | None = None  # reason when this case is a known failure
    duration_s: float | None = None
    sign: dict[str, Any] | None = None  # summary of the CertificateVerify signing call
    calls: list[dict[str, Any]] | None = None  # PKCS#11 calls made for this handshake
    explanation: dict[str, Any] | None = None  # `p11tls explain` findings for a failure
    logs: dict[str, str] = field(default_factory=dict)  # name -> path of the case's log

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


def write_results(records: list[HandshakeRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [r.to_json() for r in sorted(records, key=lambda r: r.case_id)]
    path.write_text(json.dumps(data, indent=2) + "\n")
