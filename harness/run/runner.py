"""Runs matrix cases: token → keys (+CA) → server + client → HandshakeRecord.

Usable without pytest (the plugin wraps it in fixtures). One MatrixRunner per
process: it loads the PKCS#11 module once, creates the throw-away SoftHSM2
token when no module is configured, provisions each key the first time a
case needs it, and removes what it created when closed.

It is a context manager: everything it makes (temporary directories, the
SoftHSM2 store, the token lock and journal, sessions, the TLS server, client
processes) is closed on every path, a failed start included; the token is
cleaned first, with ending signals held back meanwhile.

The token side (tokens, lock, journal, keys, clean-up) is harness.token.run_tokens;
this module runs one case end to end: handshake, record, verdict, prediction.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.clients import make_client
from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.clients.software import NEEDS_IMPORT
from harness.errors import HarnessError
from harness.explain.explanation import explain_file
from harness.explain.no_sign import explain_without_signing
from harness.interposer.calls import parse_calls, scheme_of_signing_call, sign_summary
from harness.interposer.profile import load_profile
from harness.matrix.cases import SOFTWARE, Case
from harness.matrix.keys import KEYS, Provisioning
from harness.matrix.record import IMPORT_UNSUPPORTED, HandshakeRecord, Outcome
from harness.process import signals_held
from harness.run.config import Settings
from harness.run.recording import CallRecorder, provisioned_by
from harness.run.token_facts import token_facts
from harness.tls.server import (
    HandshakeServer,
    ServerCase,
    ServerError,
    ServerObservation,
    ca_names_from,
)
from harness.tls.transcript_padding import padding_file
from harness.token.existing_keys import CERT_FROM_FILE, NO_CERT_ON_TOKEN, canonical_spec, writes_in
from harness.token.journal import CleanupError
from harness.token.provision import ProvisionedKey, ProvisioningRefused
from harness.token.run_tokens import RunTokens
from harness.token.session import TokenTimeout
from harness.verdict.expectations import CaseExpectations, has_outcomes
from harness.verdict.predict import predict
from harness.versions import command_version

# After this many cases in a row timed out on a token, the rest are not run.
STOP_AFTER_TIMEOUTS = 3
STOPPED = "token stopped answering"
# A client with a peer of its own that reported nothing about it.
NO_PEER = ServerObservation(accepted=False, negotiated_version=None, cipher=None,
                            signature_scheme=None, client_subject=None,
                            error="the client's own peer reported nothing", connected=False)


class MatrixRunner:
    """`with MatrixRunner(settings) as runner:` (or call close())."""

    def __init__(self, settings: Settings, workdir: Path | None = None, *,
                 logs_dir: Path | None = None, run_lock_held: bool = False,
                 session_id: str | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._stack = ExitStack()  # what this runner made, closed in reverse order
        self._closed = False
        self.session_id = session_id  # the pytest run this runner belongs to (journal)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="p11tls-"))
        if workdir is None:
            self._stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        try:
            self._start(logs_dir, run_lock_held, say)
        except BaseException:
            self.close(quiet=True)
            raise

    def __enter__(self) -> MatrixRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, logs_dir: Path | None, run_lock_held: bool,
               say: Callable[[str], None] | None) -> None:
        settings = self.settings
        self.logs_dir = logs_dir or settings.reports / "logs"
        self.clients: dict[str, Client] = {}
        self._versions: dict[str, str] = {}
        self._components: dict[str, dict[str, str | None]] = {}  # client -> versions of facts
        self.recorders: dict[str, CallRecorder] = {}
        self._server: HandshakeServer | None = None  # one TLS server for every case
        self._timeouts: dict[str, int] = {}  # token label -> cases in a row that timed out
        self.stopped: dict[str, str] = {}  # token label -> why its cases are not run
        self.profile = load_profile(settings.profile) if settings.profile else None
        self.run_tokens = tokens = RunTokens(
            settings, self.workdir, self._stack, profile=self.profile,
            run_lock_held=run_lock_held, session_id=self.session_id, say=say)
        # what the cases use of the run's tokens (the same objects)
        self.ca, self.env, self.module, self.pin = tokens.ca, tokens.env, tokens.module, tokens.pin
        self.softhsm, self.setup, self.existing = tokens.softhsm, tokens.setup, tokens.existing
        self.tokens, self.keys, self.provisioners = tokens.tokens, tokens.keys, tokens.provisioners
        self.token_labels, self.main_token = tokens.token_labels, tokens.main_token
        self.key, self.token_mechanisms = tokens.key, tokens.token_mechanisms
        self.token_label_for, self.token_info = tokens.token_label_for, tokens.token_info
        self.load_path, self.warm = tokens.load_path, tokens.warm
        self.missing_mechanism = tokens.missing_mechanism
        self.expectations = CaseExpectations(
            profile=self.profile.name if self.profile else None,
            check_mechanisms=self.checks_mechanisms,
            module=self.setup.name if self.setup else None)
        # what every record says about the module: the real one, not the interposer
        self.module_summary: dict[str, Any] = {
            **tokens.token_info().as_dict(), "path": str(self.module),
            "host": platform.node(),  # which lab host, for merged reports
            "embedded": self.softhsm is not None,
            **({"named": self.setup.name} if self.setup else {}),
            **({"emulates": self.profile.emulates} if self.profile else {}),
            **({"opensc_conf": self.env["OPENSC_CONF"]} if "OPENSC_CONF" in self.env else {}),
            **({"via": self.warm.via} if self.warm else {}),
            **({"read_only": True,
                "existing_keys": [k.describe() for k in self.existing.values()]}
               if settings.read_only else {}),
        }

    def client(self, name: str) -> Client:
        if name not in self.clients:
            self.clients[name] = make_client(name, self.settings.client_options())
        return self.clients[name]

    def recorder(self, client: str) -> CallRecorder:
        """The interposer set-up for `client` (built and configured on first use)."""
        if client not in self.recorders:
            self.recorders[client] = CallRecorder(
                self.load_path, self.workdir / "interposer", client, spy=self.settings.spy,
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
            if self.setup is not None:
                self._components[client].update(self.setup.versions)
        return dict(self._components[client])

    def judge(self, case: Case, record: HandshakeRecord) -> HandshakeRecord:
        """The record with its verdict: what the data files measured on the
        versions here expect of the case (problems, unmeasured notes). A key
        already on the token has the facts of its key type; in a read-only run
        any write call recorded for the case is a problem."""
        facts_case = case
        if case.provisioning is Provisioning.EXISTING:
            canonical = canonical_spec(case.key)
            if canonical is not None:
                facts_case = replace(case, key=canonical)
        judged = self.expectations.judge(facts_case, record, self.versions(case.client))
        self._predict(facts_case, judged)
        if self.settings.read_only:
            for who, writes in (("the client", writes_in(record.calls)),
                                ("the harness", self.run_tokens.harness_writes())):
                if writes:
                    judged.problems.append(f"read-only run, yet {who} called "
                                           f"{', '.join(writes)}")
                    judged.verdict = "failed"
        return judged

    def _predict(self, case: Case, record: HandshakeRecord) -> None:
        """What harness.verdict.predict expects of the case from the token's mechanisms
        (and the profile's rules), and whether the record is that."""

        if case.key.name not in KEYS or case.padding_bytes is not None:
            return  # a key by label, or a sweep step: no cell of the matrix
        if self.setup is not None:
            # the rules read a token's mechanism list; a named module's own quirks
            # (tpm2: no import, P-521's point) are facts of its own (data/modules/)
            return
        try:
            token = token_facts(self.token_mechanisms(case.key), self.profile,
                                self.token_info().as_dict(),
                                self.softhsm is not None).seen_by(
                case.client, self.settings.java_p11_config)
        except HarnessError:
            return
        cell = predict(case.client, case.key.name, case.tls.value, token,
                       self.versions(case.client), sigalgs=case.client_sigalgs,
                       provisioning=case.provisioning.value)
        record.predicted = cell.to_json()
        record.prediction_matched = cell.matches(record)

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
        label = self.token_label_for(case.key)
        if label in self.stopped:  # the token hung: do not wait out every case
            record.outcome, record.error = Outcome.SKIP.value, self.stopped[label]
            return record
        client = self.client(case.client)
        not_here = self._not_runnable(case, client)
        if not_here is not None:
            record.outcome, record.error = not_here
            return record
        record.client_version = self._client_version(client)
        with self.run_tokens.turn(case.key):
            timed_out = self._run_case(record, case, client)
        record.provisioned = provisioned_by(  # the harness's own C_CreateObject etc.
            self.run_tokens.provision_chunks.get((case.key.name, case.provisioning)))
        self._timeouts[label] = self._timeouts.get(label, 0) + 1 if timed_out else 0
        if self._timeouts[label] >= STOP_AFTER_TIMEOUTS:
            self.stopped[label] = (
                f"{STOPPED}: {STOP_AFTER_TIMEOUTS} cases in a row on token {label!r} timed "
                f"out after {self.settings.timeout_s:g} s; its remaining cases are not run")
        return record

    def _run_case(self, record: HandshakeRecord, case: Case, client: Client) -> bool:
        """Provisioning and handshake into record; True when the token or the
        client did not answer in time."""
        logs = self.logs_dir / case.case_id
        self._between_cases()
        try:
            key = self.key(case.key, case.provisioning)
        except ProvisioningRefused as refused:
            if case.client != SOFTWARE or refused.host_key is None:
                self._record_refusal(record, case, refused, logs)
                return False
            key = refused.host_key  # the software control needs no token
        except TokenTimeout as exc:  # the harness's own call on the token hung
            record.outcome, record.error = Outcome.FAIL.value, f"provisioning: {exc}"
            return True
        self._between_cases()
        return self._handshake(record, case, client, key, logs)

    def _between_cases(self) -> None:
        """A named module's hook before provisioning and before each handshake:
        on a device with few slots and no resource manager (a TPM) nothing may
        stay loaded: this process's sessions log out (tpm2-pkcs11 frees the TPM
        only then), warm clients (a JVM) end, then the module's own clean-up
        (flush what exited clients left)."""
        if self.setup is None:
            return
        if self.setup.release_sessions:
            for token in self.tokens.values():
                token.release_session()
            for client in self.clients.values():
                client.close()
        self.setup.after_case()

    def _not_runnable(self, case: Case, client: Client) -> tuple[str, str] | None:
        """(outcome, reason) when the case cannot run here, else None."""
        reason = client.unavailable_reason()
        if reason:  # a skip, unless the user asked for this client by name
            named = self.settings.named_client(client.name)
            return (Outcome.ERROR.value if named else Outcome.SKIP.value), reason
        if case.client == SOFTWARE and case.provisioning is not Provisioning.IMPORT:
            return Outcome.SKIP.value, NEEDS_IMPORT
        existing = self.existing.get(case.key.name)
        if (existing is not None and existing.cert_der is None
                and not getattr(client, "cert_from_file",
                                case.client.split("@", 1)[0] in CERT_FROM_FILE)):
            return Outcome.SKIP.value, NO_CERT_ON_TOKEN.format(label=existing.label,
                                                               client=case.client)
        missing = self.missing_mechanism(case.key)
        if missing:  # e.g. Ed25519 "where the token supports it"
            return (Outcome.SKIP.value,
                    f"token {self.token_label_for(case.key)!r} does not offer {missing}")
        return None

    def _record_refusal(self, record: HandshakeRecord, case: Case,
                        refused: ProvisioningRefused, logs: Path) -> None:
        """The token would not take the key: the case fails before any handshake
        (a token that cannot import at all: the case is skipped, saying so)."""
        record.outcome, record.error = Outcome.FAIL.value, f"provisioning: {refused.ckr}"
        if (case.provisioning is Provisioning.IMPORT
                and refused.ckr == "CKR_FUNCTION_NOT_SUPPORTED"):
            record.outcome = Outcome.SKIP.value
            record.error = f"{IMPORT_UNSUPPORTED} (C_CreateObject -> {refused.ckr})"
        chunk = self.run_tokens.provision_chunks.get((case.key.name, case.provisioning))
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
        existing = self.existing.get(case.key.name)
        cert = existing.certificate if existing is not None else None
        # a certificate already on the token: whatever CA issued it, accepted
        # (its CertificateVerify still checked) and its issuer named
        issuers = (cert.issuer,) if cert is not None else None
        return ServerCase(tls=case.tls, client_sigalgs=case.client_sigalgs, ca_names=names,
                          log_path=log_path, timeout_s=self.settings.timeout_s,
                          client_issuers=issuers)

    def _handshake(self, record: HandshakeRecord, case: Case, client: Client,
                   key: ProvisionedKey, logs: Path) -> bool:
        """Server + client (through the interposer), then what both saw, into record."""
        server = self.server()
        server_log = logs / "server.log"
        module, env = self.load_path, self.env
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
            server_cert_pem=self.ca.server_cert_pem, server_key_pem=self.ca.server_key_pem,
        )
        own_peer = client.own_peer is not None  # openvpn, hostapd: not the harness's server
        if not own_peer:
            server.arm(self._server_case(case, server_log))
        try:
            result = client.handshake(job)
        except HarnessError as exc:  # e.g. SunPKCS11 refused --java-p11-config
            record.error = str(exc)  # outcome stays "error": the harness could not run it
            if not own_peer:
                self._collect_quietly(server)
            return False
        try:
            seen = result.peer or NO_PEER if own_peer else server.collect()
        except ServerError as exc:  # the harness's server broke: an error, not a token failure
            record.error = str(exc)
            return bool(result.timed_out)
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
        if own_peer:
            if result.peer_log is not None:
                record.logs["server"] = str(result.peer_log)
            record.peer = client.own_peer
            if seen.accepted and seen.signature_scheme is None:
                # the peer's log does not name the client's scheme: the one the
                # token's signing call implies, said so in the record
                record.signature_scheme = scheme_of_signing_call(record.sign)
                record.peer = f"{client.own_peer} (scheme derived from the token's signing call)"
        record.client_subject = seen.client_subject
        record.signed_bytes = seen.signed_bytes
        right_cert = seen.client_subject is not None and (
            seen.client_subject == key.subject if key.subject else
            key.label in seen.client_subject)
        if seen.accepted and right_cert:
            record.outcome = Outcome.OK.value
            return False
        record.outcome = Outcome.FAIL.value
        record.error = failure_reason(result, seen, record.sign, self.settings.timeout_s)
        if recorder is not None:
            record.explanation = explain_calls(logs / "calls.jsonl")
        if record.explanation is None and not (record.sign or {}).get("mechanism"):
            # no signing call to explain: say why from what the harness knows
            record.explanation = explain_without_signing(
                self.token_mechanisms(case.key), case.key.name, f"TLS{case.tls.value}",
                result.error, seen.error)
        return bool(result.timed_out)

    @staticmethod
    def _collect_quietly(server: HandshakeServer) -> None:
        """Disarm the server after a client that could not run; the record has its error."""
        try:
            server.collect()
        except ServerError:
            pass

    def close(self, quiet: bool = False) -> None:
        """End the clients and the server, clean the token (signals held back
        meanwhile), then release and remove everything else. Raises
        CleanupError (unless `quiet`) naming every object left on the token."""
        if self._closed:
            return
        self._closed = True
        failure: CleanupError | None = None
        with signals_held():
            try:
                server, self._server = getattr(self, "_server", None), None
                if server is not None:
                    server.stop()
                for client in getattr(self, "clients", {}).values():
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001 - the token comes first
                        pass
                tokens = getattr(self, "run_tokens", None)
                if tokens is not None:
                    failure = tokens.clean()
            finally:
                self._stack.close()
        if failure is not None and not quiet:
            raise failure


def explain_calls(record_file: Path) -> dict[str, Any] | None:
    """`p11tls explain` findings for a case's calls, or None when no rule matches."""

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
