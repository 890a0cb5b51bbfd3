"""Shared checks of the tests for the process clients (nss, curl, go,
openvpn, eap-tls): real handshakes on the session's throw-away SoftHSM2 token
through the recording interposer, and direct jobs for the negative controls
(wrong PIN, a server that trusts another CA)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.clients.base import ClientResult, HandshakeJob
from harness.matrix.cases import Case
from harness.matrix.keys import KEYS, Provisioning
from harness.tls.ca import TestCA
from harness.tls.server import HandshakeServer, ServerCase, ServerObservation
from harness.tls.version import TLSVersion

# The digest a raw signing mechanism gets for a TLS signature scheme: the
# scheme's hash, or for rsa_pkcs1 the DigestInfo (19-byte prefix + SHA-256).
DIGEST_BYTES = {"sha256": 32, "sha384": 48, "sha512": 64}
RAW_MECHANISMS = {"CKM_ECDSA", "CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS"}


def expected_input(scheme: str) -> int:
    """What a client hashing on the host hands the token, from the scheme the
    server saw (independent of the recorded calls)."""
    digest = DIGEST_BYTES[re.search(r"sha(256|384|512)$", scheme).group(0)]  # type: ignore[union-attr]
    return digest + 19 if scheme.startswith("rsa_pkcs1_") else digest


def handshake_ok(runner: Any, client: str, key: str, tls: TLSVersion) -> Any:
    """A matrix case of `client` on a generated key, judged: ok, at the TLS
    version asked for, with the key's certificate. The record, for the
    client's own checks."""
    case = Case(client, KEYS[key], Provisioning.GENERATE, tls)
    record = runner.judge(case, runner.run(case))
    assert record.outcome == "ok", record.error
    assert record.negotiated_version == f"TLSv{tls.value}"
    assert runner.key(KEYS[key], Provisioning.GENERATE).label in record.client_subject
    return record


def signed_a_host_made_digest(record: Any) -> None:
    """One raw C_Sign over the digest of the scheme the server saw."""
    assert record.sign["mechanism"] in RAW_MECHANISMS and record.sign["parts"] == 0
    assert record.sign["input_bytes"] == expected_input(record.signature_scheme)


@dataclass
class Direct:
    result: ClientResult
    seen: ServerObservation
    calls: list[dict[str, Any]]
    job: HandshakeJob


def run_direct(runner: Any, client_name: str, logs: Path, *, key: str = "p256",
               tls: TLSVersion = TLSVersion.TLS12, pin: str | None = None,
               client_ca: Path | None = None) -> Direct:
    """One handshake of `client_name` through the runner's interposer against a
    server of its own (trusting `client_ca` for client certificates)."""
    client = runner.client(client_name)
    provisioned = runner.key(KEYS[key], Provisioning.GENERATE)
    recorder = runner.recorder(client_name)
    mark = recorder.mark()
    logs.mkdir(parents=True, exist_ok=True)
    with HandshakeServer(cert_pem=runner.ca.server_cert_pem, key_pem=runner.ca.server_key_pem,
                         client_ca_pem=client_ca or runner.ca.ca_pem) as server:
        server.arm(ServerCase(tls=tls, log_path=logs / "server.log"))
        job = HandshakeJob(
            host="127.0.0.1", port=server.port, tls=tls, module=recorder.module,
            token_label=runner.token_label_for(KEYS[key]), pin=pin or runner.pin,
            key_label=provisioned.label, key_id_hex=provisioned.id_hex,
            cert_pem=provisioned.cert_pem, ca_pem=runner.ca.ca_pem,
            log_path=logs / "client.log", timeout_s=20, env={**runner.env, **recorder.env})
        try:
            result = client.handshake(job)
        finally:
            seen = server.collect()
    return Direct(result, seen, recorder.collect(mark, logs), job)


def foreign_ca(directory: Path) -> Path:
    """The CA file of a CA that issued none of the harness's certificates."""
    return TestCA(directory, name="another CA").ca_pem


def logins(calls: list[dict[str, Any]]) -> list[str]:
    return [c["rv"] for c in calls if c["fn"] == "C_Login"]


def signs(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in calls if c["fn"] in ("C_Sign", "C_SignUpdate", "C_SignFinal")]


def wrong_pin(pin: str) -> str:
    """A PIN that is surely not `pin`, of the same length."""
    return "0" * len(pin) if pin != "0" * len(pin) else "1" * len(pin)


def run_own_peer(runner: Any, client: str, logs: Path, *, pin: str | None = None,
                 ca: Path | None = None, tls: TLSVersion = TLSVersion.TLS12
                 ) -> tuple[ClientResult, list[dict[str, Any]], HandshakeJob]:
    """One handshake of a client with a peer of its own (openvpn, eap-tls) with
    the run's P-256 key, outside the matrix: (result, recorded calls, job)."""
    key = runner.key(KEYS["p256"], Provisioning.GENERATE)
    recorder = runner.recorder(client)
    mark = recorder.mark()
    job = HandshakeJob(
        host="127.0.0.1", port=0, tls=tls, module=recorder.module,
        token_label=runner.token_label_for(KEYS["p256"]), pin=pin or runner.pin,
        key_label=key.label, key_id_hex=key.id_hex, cert_pem=key.cert_pem,
        ca_pem=ca or runner.ca.ca_pem, log_path=logs / "client.log", timeout_s=20,
        env={**runner.env, **recorder.env}, server_cert_pem=runner.ca.server_cert_pem,
        server_key_pem=runner.ca.server_key_pem)
    result = runner.client(client).handshake(job)
    return result, recorder.collect(mark, logs), job
