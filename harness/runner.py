"""Runs matrix cases: token → keys (+CA) → server + client → HandshakeRecord.

Usable without pytest (the plugin wraps it in fixtures). One MatrixRunner per
process: it loads the PKCS#11 module once, creates the throw-away SoftHSM2
token when no module is configured, provisions each key the first time a
case needs it, and removes what it created when closed.
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness.ca import TestCA
from harness.calls import sign_summary
from harness.clients import CLIENTS
from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.clients.software import NEEDS_IMPORT
from harness.config import Settings
from harness.errors import HarnessError
from harness.expectations import CaseExpectations, has_outcomes
from harness.interposer import build_interposer, write_interposer_config
from harness.keys import Algorithm, KeySpec, Provisioning
from harness.matrix import SOFTWARE, Case
from harness.padding import padding_file
from harness.profile import load_profile
from harness.provision import ProvisionedKey, Provisioner, ProvisioningRefused
from harness.record import HandshakeRecord, Outcome
from harness.recording import CallRecorder, parse_calls, read_from, size_of
from harness.server import (
    HandshakeServer,
    ServerCase,
    ServerError,
    ServerObservation,
    ca_names_from,
)
from harness.softhsm import TemporarySoftHSM
from harness.token import Token, TokenInfo
from harness.versions import command_version

EMBEDDED_LABEL = "p11tls"
# libp11 cannot enumerate a token holding an Ed25519 key, so on the embedded
# default Ed25519 lives on a token of its own.
EMBEDDED_EDDSA_LABEL = "p11tls-eddsa"


class MatrixRunner:
    def __init__(self, settings: Settings, workdir: Path | None = None) -> None:
        self.settings = settings
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="p11tls-"))
        self._own_workdir = workdir is None
        self.run_tag = secrets.token_hex(3)
        self.softhsm: TemporarySoftHSM | None = None
        self.env: dict[str, str] = {}
        self.tokens: dict[str, Token] = {}
        self.provisioners: dict[str, Provisioner] = {}
        self.keys: dict[tuple[str, Provisioning], ProvisionedKey | ProvisioningRefused] = {}
        self.clients: dict[str, Client] = {}
        self._versions: dict[str, str] = {}
        self._components: dict[str, dict[str, str | None]] = {}  # client -> versions of facts
        self._mechanisms: dict[str, tuple[str, ...]] = {}  # token label -> mechanism names
        self.recorders: dict[str, CallRecorder] = {}
        self._server: HandshakeServer | None = None  # one TLS server for every case
        # under a profile: the record of this process's own calls (provisioning)
        self.provision_record: Path | None = None
        self.provision_chunks: dict[tuple[str, Provisioning], bytes] = {}
        self.ca = TestCA(self.workdir / "ca")
        self.profile = load_profile(settings.profile) if settings.profile else None
        if settings.module is None:
            self.softhsm = TemporarySoftHSM(self.workdir / "softhsm")
            self.softhsm.activate()  # python-pkcs11 in this process reads it too
            self.env = dict(self.softhsm.env)
            self.module = self.softhsm.module
            self.pin = secrets.token_hex(4)
            self.token_labels = {"main": EMBEDDED_LABEL, "eddsa": EMBEDDED_EDDSA_LABEL}
            for label in self.token_labels.values():
                self.softhsm.init_token(label, self.pin)
        else:
            self.module = settings.module
            self.pin = settings.pin or ""
            assert settings.token_label is not None
            self.token_labels = {"main": settings.token_label, "eddsa": settings.token_label}
        # Under a profile this process, which provisions the keys, goes through
        # the emulation too: a refused import must be refused here.
        self.token_module = self._emulate_here() if self.profile else self.module
        self.main_token = self._token("main")  # fails fast on a bad module/label/PIN
        _ = self.main_token.session
        self.expectations = CaseExpectations(
            profile=self.profile.name if self.profile else None,
            check_mechanisms=self.checks_mechanisms)
        # what every record says about the module: the real one, not the interposer
        self.module_summary: dict[str, Any] = {
            **self.token_info().as_dict(), "path": str(self.module),
            "host": platform.node(),  # which lab host, for merged reports
            "embedded": self.softhsm is not None,
            **({"emulates": self.profile.emulates} if self.profile else {}),
        }

    # -- tokens and keys ---------------------------------------------------------
    def _emulate_here(self) -> Path:
        """Load the interposer with the profile in this process; its calls are
        kept in interposer/calls-provision.jsonl."""
        assert self.profile is not None
        directory = self.workdir / "interposer"
        directory.mkdir(parents=True, exist_ok=True)
        self.provision_record = directory / "calls-provision.jsonl"
        os.environ.update(write_interposer_config(
            self.module, self.provision_record,
            directory / "interposer-provision.conf", self.profile.interposer_lines()))
        return build_interposer()

    def _token(self, role: str) -> Token:
        label = self.token_labels[role]
        if label not in self.tokens:
            self.tokens[label] = Token(self.token_module, label, self.pin)
            self.provisioners[label] = Provisioner(
                self.tokens[label], self.ca, self.workdir, self.run_tag)
        return self.tokens[label]

    def token_label_for(self, key: KeySpec) -> str:
        return self.token_labels["eddsa" if key.algorithm is Algorithm.EDDSA else "main"]

    def token_info(self) -> TokenInfo:
        return self.main_token.info()

    def key(self, spec: KeySpec, provisioning: Provisioning) -> ProvisionedKey:
        """The provisioned key for (spec, provisioning), made on first use."""
        slot = (spec.name, provisioning)
        if slot not in self.keys:
            role = "eddsa" if spec.algorithm is Algorithm.EDDSA else "main"
            self._token(role)
            start = size_of(self.provision_record)
            try:
                self.keys[slot] = self.provisioners[self.token_labels[role]].provision(
                    spec, provisioning)
            except ProvisioningRefused as refused:
                self.keys[slot] = refused
            if self.provision_record is not None:
                self.provision_chunks[slot] = read_from(self.provision_record, start)
        result = self.keys[slot]
        if isinstance(result, ProvisioningRefused):
            raise result
        return result

    def missing_mechanism(self, key: KeySpec) -> str | None:
        """The signing mechanism a key type needs that its token lacks, if any."""
        needed = {Algorithm.EDDSA: "EDDSA"}.get(key.algorithm)
        if needed is None:
            return None
        token = self._token("eddsa" if key.algorithm is Algorithm.EDDSA else "main")
        if token.label not in self._mechanisms:
            self._mechanisms[token.label] = token.info().mechanisms
        return None if needed in self._mechanisms[token.label] else f"CKM_{needed}"

    def client(self, name: str) -> Client:
        if name not in self.clients:
            if name not in CLIENTS:
                raise HarnessError(f"unknown client {name!r}: choose one of {', '.join(CLIENTS)}")
            self.clients[name] = CLIENTS[name].from_settings(self.settings)
        return self.clients[name]

    def recorder(self, client: str) -> CallRecorder:
        """The interposer set-up for `client` (built and configured on first use)."""
        if client not in self.recorders:
            self.recorders[client] = CallRecorder(
                self.module, self.workdir / "interposer", client, spy=self.settings.spy,
                extra_lines=tuple(self.profile.interposer_lines()) if self.profile else ())
        return self.recorders[client]

    def _client_version(self, client: Client) -> str:
        if client.name not in self._versions:  # one subprocess per client and run
            self._versions[client.name] = client.version()
        return self._versions[client.name]

    # -- one case -----------------------------------------------------------------
    def versions(self, client: str) -> dict[str, str | None]:
        """What the case's facts are keyed to: the client's components and,
        on the embedded default, SoftHSM's version (detected once per run)."""
        if client not in self._components:
            self._components[client] = self.client(client).components()
            if self.softhsm is not None:
                self._components[client]["softhsm"] = command_version(
                    ["softhsm2-util", "--version"])
        return dict(self._components[client])

    def judge(self, case: Case, record: HandshakeRecord) -> HandshakeRecord:
        """The record with its verdict: what the data files measured on the
        versions here expect of the case (problems, unmeasured notes)."""
        return self.expectations.judge(case, record, self.versions(case.client))

    @property
    def checks_mechanisms(self) -> bool:
        """expected_mechanisms.toml describes the embedded SoftHSM2 token with
        calls recorded; a shipped profile's outcome file overrides it case by
        case, and a profile of the user's own says nothing we could check."""
        return (self.softhsm is not None and self.settings.record
                and (self.profile is None or has_outcomes(self.profile.name)))

    def run(self, case: Case) -> HandshakeRecord:
        """One handshake case, start to finish; a failure is a record, not an exception."""
        record = HandshakeRecord(
            case_id=case.case_id, client=case.client, key=case.key.name,
            provisioning=case.provisioning.value, tls=case.tls.value,
            client_sigalgs=case.client_sigalgs, padding_bytes=case.padding_bytes,
            profile=self.profile.name if self.profile else None,
            outcome=Outcome.ERROR.value, module=dict(self.module_summary),
        )
        client = self.client(case.client)
        not_here = self._not_runnable(case, client)
        if not_here is not None:
            record.outcome, record.error = not_here
            return record
        record.client_version = self._client_version(client)
        logs = self.settings.reports / "logs" / case.case_id
        try:
            key = self.key(case.key, case.provisioning)
        except ProvisioningRefused as refused:
            if case.client != SOFTWARE or refused.host_key is None:
                self._record_refusal(record, case, refused, logs)
                return record
            key = refused.host_key  # the software control needs no token
        self._handshake(record, case, client, key, logs)
        return record

    def _not_runnable(self, case: Case, client: Client) -> tuple[str, str] | None:
        """(outcome, reason) when the case cannot run here, else None."""
        reason = client.unavailable_reason()
        if reason:  # a skip, unless the user asked for this client by name
            named = self.settings.named_client(client.name)
            return (Outcome.ERROR.value if named else Outcome.SKIP.value), reason
        if case.client == SOFTWARE and case.provisioning is not Provisioning.IMPORT:
            return Outcome.SKIP.value, NEEDS_IMPORT
        missing = self.missing_mechanism(case.key)
        if missing:  # e.g. Ed25519 "where the token supports it"
            return (Outcome.SKIP.value,
                    f"token {self.token_label_for(case.key)!r} does not offer {missing}")
        return None

    def _record_refusal(self, record: HandshakeRecord, case: Case,
                        refused: ProvisioningRefused, logs: Path) -> None:
        """The token would not take the key: the case fails before any handshake."""
        record.outcome, record.error = Outcome.FAIL.value, f"provisioning: {refused.ckr}"
        chunk = self.provision_chunks.get((case.key.name, case.provisioning))
        if chunk is not None:  # what the (emulated) token was asked, for the report
            logs.mkdir(parents=True, exist_ok=True)
            (logs / "calls.jsonl").write_bytes(chunk)
            record.calls, record.logs["calls"] = parse_calls(chunk), str(logs / "calls.jsonl")
            record.explanation = explain_calls(logs / "calls.jsonl")

    def server(self) -> HandshakeServer:
        """The run's TLS server, started on first use."""
        if self._server is None:
            server = HandshakeServer(cert_pem=self.ca.server_cert_pem,
                                     key_pem=self.ca.server_key_pem, client_ca_pem=self.ca.ca_pem)
            server.start()
            self._server = server
        return self._server

    def _server_case(self, case: Case, log_path: Path) -> ServerCase:
        names = (None if case.padding_bytes is None
                 else ca_names_from(padding_file(self.workdir / "padding", case.padding_bytes)))
        return ServerCase(tls=case.tls, client_sigalgs=case.client_sigalgs, ca_names=names,
                          log_path=log_path, timeout_s=self.settings.timeout_s)

    def _handshake(self, record: HandshakeRecord, case: Case, client: Client,
                   key: ProvisionedKey, logs: Path) -> None:
        """Server + client (through the interposer), then what both saw, into record."""
        server = self.server()
        server_log = logs / "server.log"
        module, env = self.module, self.env
        # the software control makes no PKCS#11 call: nothing to record
        recording = self.settings.record and case.client != SOFTWARE
        recorder = self.recorder(case.client) if recording else None
        if recorder is not None:
            module, env = recorder.module, {**self.env, **recorder.env}
            mark = recorder.mark()
        job = HandshakeJob(
            host="127.0.0.1", port=server.port, tls=case.tls, module=module,
            token_label=self.token_label_for(case.key), pin=self.pin,
            key_label=key.label, key_id_hex=key.id_hex, cert_pem=key.cert_pem,
            ca_pem=self.ca.ca_pem, log_path=logs / "client.log",
            timeout_s=self.settings.timeout_s, env=env, private_key=key.private_key,
        )
        server.arm(self._server_case(case, server_log))
        try:
            result = client.handshake(job)
        except HarnessError as exc:  # e.g. SunPKCS11 refused --java-p11-config
            record.error = str(exc)  # outcome stays "error": the harness could not run it
            self._collect_quietly(server)
            return
        try:
            seen = server.collect()
        except ServerError as exc:  # the harness's server broke: an error, not a token failure
            record.error = str(exc)
            return
        record.logs = {"client": str(job.log_path), "server": str(server_log)}
        if recorder is not None:
            record.calls = recorder.collect(mark, logs)
            record.sign = sign_summary(record.calls)
            record.logs["calls"] = str(logs / "calls.jsonl")
            if recorder.spy_log is not None:
                record.logs["spy"] = str(logs / "spy.log")
        record.duration_s = round(result.duration_s, 4)
        record.negotiated_version = seen.negotiated_version
        record.cipher = seen.cipher
        record.signature_scheme = seen.signature_scheme
        record.client_subject = seen.client_subject
        record.signed_bytes = seen.signed_bytes
        right_cert = seen.client_subject is not None and key.label in seen.client_subject
        if seen.accepted and right_cert:
            record.outcome = Outcome.OK.value
            return
        record.outcome = Outcome.FAIL.value
        record.error = failure_reason(result, seen, record.sign, self.settings.timeout_s)
        if recorder is not None:
            record.explanation = explain_calls(logs / "calls.jsonl")

    @staticmethod
    def _collect_quietly(server: HandshakeServer) -> None:
        """Disarm the server after a client that could not run; the record has its error."""
        try:
            server.collect()
        except ServerError:
            pass

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        for client in self.clients.values():
            client.close()
        for provisioner in self.provisioners.values():
            if self.softhsm is None:  # a user's token: remove exactly what we made
                provisioner.remove_created()
        for token in self.tokens.values():
            token.close()
        if self.softhsm is not None:
            self.softhsm.remove()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def explain_calls(record_file: Path) -> dict[str, Any] | None:
    """`p11tls explain` findings for a case's calls, or None when no rule matches."""
    from harness.explain import explain_file

    try:
        findings = explain_file(record_file).to_json()["findings"]
    except HarnessError:  # an empty or unreadable record says nothing
        return None
    return {"findings": findings} if findings else None


def failure_reason(result: ClientResult, seen: ServerObservation,
                   sign: dict[str, Any] | None, timeout_s: float) -> str:
    """The most telling line for a failed handshake: the token's CKR code when
    the signing call failed, else what the client and the server said."""
    if result.timed_out:
        return f"client timed out after {timeout_s:g} s"
    sign_rv = (sign or {}).get("rv")
    if sign_rv not in (None, "CKR_OK"):
        return str(sign_rv)
    if result.error and seen.error:
        return f"{result.error} (server: {seen.error})"
    return result.error or seen.error or (
        "client never reached the server" if not seen.connected
        else "server rejected the handshake")
