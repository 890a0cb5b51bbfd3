"""The Java SunPKCS11 client against the reference TLS server and a throw-away
SoftHSM2 token.

Keys are provisioned in child processes (this pytest process loads the matrix's
own SoftHSM2 store; one process must load one module path once). Every
positive test has a negative control next to it: another CA's certificate, a
wrong PIN, a dead or hung JVM, a missing JDK, a bad configuration line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from harness.clients.base import HandshakeJob
from harness.clients.java import (
    COMBINED_MECHANISMS,
    JavaClient,
    JavaNoCombinedClient,
    JavaResult,
    build_classes,
    decode_answer,
    encode_request,
    find_jdk,
)
from harness.errors import ConfigError, TokenError, ToolMissing
from harness.tls.server import HandshakeServer, ServerCase, ServerObservation
from harness.tls.version import TLSVersion
from harness.token.softhsm import TemporarySoftHSM

TLS_IDS = {TLSVersion.TLS12: "tls12", TLSVersion.TLS13: "tls13"}

# Runs in a child Python: one or more CAs, and keys generated on the token with
# their certificates stored under the same CKA_ID and CKA_LABEL.
_PROVISION = r"""
import json, sys
from pathlib import Path
from harness.tls.ca import TestCA
from harness.matrix.keys import KEYS, Provisioning
from harness.token.provision import Provisioner
from harness.token.session import Token
spec = json.loads(sys.argv[1])
token = Token(Path(spec["module"]), spec["token"], spec["pin"])
cas = {name: TestCA(Path(d), name=f"p11tls {name} CA") for name, d in spec["cas"].items()}
out = {}
for tag, key, ca in spec["keys"]:
    k = Provisioner(token, cas[ca], Path(spec["workdir"]), tag).provision(
        KEYS[key], Provisioning.GENERATE)
    out[tag] = {"label": k.label, "id": k.id_hex, "cert": str(k.cert_pem)}
token.close()
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Key:
    label: str
    id_hex: str
    cert: Path


@dataclass
class Keyring:
    store: TemporarySoftHSM
    token: str
    pin: str
    ca_dir: Path  # trusted by the server for clients, and issuer of its own certificate
    keys: dict[str, Key]

    def provision(self, keys: list[tuple[str, str]], ca_dir: Path) -> dict[str, Key]:
        """Generate keys (tag, key type) on the token, certificates from a new CA in ca_dir."""
        spec = {"module": str(self.store.module), "token": self.token, "pin": self.pin,
                "workdir": str(ca_dir), "cas": {"ca": str(ca_dir)},
                "keys": [[tag, key, "ca"] for tag, key in keys]}
        proc = subprocess.run([sys.executable, "-c", _PROVISION, json.dumps(spec)],
                              env={**os.environ, **self.store.env}, capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        made = {tag: Key(v["label"], v["id"], Path(v["cert"]))
                for tag, v in json.loads(proc.stdout).items()}
        self.keys.update(made)
        return made


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    base = tmp_path_factory.mktemp("java-client")
    store = TemporarySoftHSM(base / "softhsm")
    token = store.init_token("java", "4711")
    s = Keyring(store, token.label, token.pin, base / "ca", {})
    # Four keys on one token, so selection by label is exercised in every test.
    s.provision([("a", "p256"), ("b", "p256"), ("r", "rsa2048")], s.ca_dir)
    s.provision([("rogue", "p256")], base / "other-ca")  # a CA the server does not trust
    return s


@pytest.fixture(scope="module")
def java() -> Iterator[JavaClient]:
    client = JavaClient()
    reason = client.unavailable_reason()
    if reason:
        pytest.skip(f"Requires a JDK: {reason}")
    yield client
    client.close()


@pytest.fixture
def spy(pkcs11_spy: Path, keyring: Keyring, tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    """(module, env, log): SoftHSM2 behind OpenSC's pkcs11-spy, logging to log."""
    log = tmp_path / "spy.log"
    env = {**keyring.store.env, "PKCS11SPY": str(keyring.store.module),
           "PKCS11SPY_OUTPUT": str(log)}
    return pkcs11_spy, env, log


def run(client: JavaClient, keyring: Keyring, key: Key, tls: TLSVersion, logdir: Path, *,
        module: Path | None = None, env: dict[str, str] | None = None, pin: str | None = None,
        client_ca: Path | None = None, sigalgs: str | None = None,
        ) -> tuple[JavaResult, ServerObservation]:
    """One handshake against a fresh reference server; the client's and the server's view."""
    logdir.mkdir(parents=True, exist_ok=True)
    n = len(list(logdir.glob("case-*.log")))
    with HandshakeServer(
            cert_pem=keyring.ca_dir / "server.pem", key_pem=keyring.ca_dir / "server.key",
            client_ca_pem=client_ca or keyring.ca_dir / "ca.pem") as server:
        server.arm(ServerCase(tls, sigalgs, log_path=logdir / f"server-{n}.log"))
        try:
            result = client.handshake(HandshakeJob(
                host="127.0.0.1", port=server.port, tls=tls,
                module=module or keyring.store.module,
                token_label=keyring.token, pin=pin or keyring.pin, key_label=key.label,
                key_id_hex=key.id_hex, cert_pem=key.cert, ca_pem=keyring.ca_dir / "ca.pem",
                log_path=logdir / f"case-{n}.log", timeout_s=20,
                env=env if env is not None else keyring.store.env))
        finally:
            seen = server.collect()
    assert isinstance(result, JavaResult)
    return result, seen


# -- pkcs11-spy logs ---------------------------------------------------------------

_CALL = re.compile(r"^\d+: (C_\w+)", re.MULTILINE)


def spy_calls(text: str) -> list[str]:
    return _CALL.findall(text)


def spy_signs(text: str) -> list[tuple[str, list[int]]]:
    """(mechanism, input lengths of C_Sign / C_SignUpdate) for each C_SignInit."""
    signs: list[tuple[str, list[int]]] = []
    for block in re.split(r"^(?=\d+: C_)", text, flags=re.MULTILINE):
        if block.split("\n", 1)[0].endswith(": C_SignInit"):
            signs.append((re.search(r"pMechanism->type = (\S+)", block).group(1), []))  # type: ignore[union-attr]
        elif re.match(r"\d+: C_Sign(Update)?\n", block) and signs:
            signs[-1][1].append(int(re.search(r"\[in\] p(?:Data|Part)\[\w+\] \S+ / (\d+)",
                                              block).group(1)))  # type: ignore[union-attr]
    return signs


# -- handshakes that work ------------------------------------------------------------------


@pytest.mark.parametrize("tls", list(TLSVersion), ids=TLS_IDS.get)
@pytest.mark.parametrize("tag, scheme", [("a", "ecdsa_secp256r1_sha256"),
                                         ("r", "rsa_pss_rsae_sha256")], ids=["p256", "rsa2048"])
def test_handshake_with_the_token_key(java, keyring, tmp_path, tag, scheme, tls):
    result, seen = run(java, keyring, keyring.keys[tag], tls, tmp_path)
    assert result.error is None and result.returncode == 0, result.log_path.read_text()
    assert result.protocol == seen.negotiated_version == f"TLSv{tls.value}"
    assert result.cipher and result.handshake_ms is not None
    assert seen.accepted and seen.signature_scheme == scheme
    assert seen.client_subject == f"CN={keyring.keys[tag].label}"
    assert "p11tls: ok" in result.log_path.read_text()


def test_the_requested_key_is_picked_among_many(java, keyring, tmp_path):
    pids = set()
    for tag in ("b", "a", "b"):  # same key type, same token, same warm JVM
        result, seen = run(java, keyring, keyring.keys[tag], TLSVersion.TLS12, tmp_path)
        assert seen.accepted, result.log_path.read_text()
        assert seen.client_subject == f"CN={keyring.keys[tag].label}"
        pids.update(java.jvm_pids())
    assert len(pids) == 1, "one warm JVM for one configuration"


def test_certificate_of_another_ca_is_rejected(java, keyring, tmp_path):
    # Negative control for the tests above: the server must judge the certificate.
    for tls in TLSVersion:
        result, seen = run(java, keyring, keyring.keys["rogue"], tls, tmp_path / tls.marker)
        assert not seen.accepted and seen.client_subject is None
        # TLS 1.3 delivers the verdict after the client's Finished; the client reads it.
        assert result.returncode == 1 and "alert" in (result.error or ""), result.error
        assert result.ckr is None


def test_unknown_key_label_fails_with_the_aliases_seen(java, keyring, tmp_path):
    missing = Key("p11tls-nosuchkey", "00", keyring.keys["a"].cert)
    result, seen = run(java, keyring, missing, TLSVersion.TLS13, tmp_path)
    # the certificate still identifies key "a": found under its own alias
    assert seen.accepted, result.log_path.read_text()
    assert "certificate found under alias " + keyring.keys["a"].label in result.log_path.read_text()
    # negative control: a certificate that is on the token under no alias
    bogus = Key("p11tls-nosuchkey", "00", keyring.ca_dir / "server.pem")
    result, seen = run(java, keyring, bogus, TLSVersion.TLS13, tmp_path)
    assert not seen.connected and result.returncode == 1
    assert "key selection" in (result.error or "")
    assert keyring.keys["rogue"].label in (result.error or ""), "lists the aliases it saw"


# -- what SunPKCS11 asks the token for (seen through pkcs11-spy) -------------------------------


@pytest.mark.parametrize("tls", list(TLSVersion), ids=TLS_IDS.get)
@pytest.mark.parametrize("tag, mechanism", [("a", "CKM_ECDSA"), ("r", "CKM_RSA_PKCS_PSS")],
                         ids=["p256", "rsa2048"])
def test_softhsm_gets_a_raw_mechanism_over_a_digest(java, keyring, spy, tmp_path, tag,
                                                    mechanism, tls):
    module, env, log = spy
    result, seen = run(java, keyring, keyring.keys[tag], tls, tmp_path, module=module, env=env)
    assert seen.accepted, result.log_path.read_text()
    # SoftHSM 2.6 has no CKM_ECDSA_SHA*, and JSSE's RSASSA-PSS hashes on the host
    assert spy_signs(log.read_text()) == [(mechanism, [32])]


def test_nocombined_hashes_on_the_host_where_java_would_not(keyring, spy, tmp_path):
    # SoftHSM advertises CKM_SHA256_RSA_PKCS, so with rsa_pkcs1_sha256 forced in
    # TLS 1.2 the default provider streams the whole transcript to the token
    # (seed 001's failure mode); java-nocombined signs a 51-byte DigestInfo.
    module, env, log = spy
    seen_by: dict[str, list[tuple[str, list[int]]]] = {}
    for client in (JavaClient(), JavaNoCombinedClient()):
        start = log.stat().st_size if log.exists() else 0
        try:
            result, seen = run(client, keyring, keyring.keys["r"], TLSVersion.TLS12,
                               tmp_path / client.name, module=module, env=env,
                               sigalgs="rsa_pkcs1_sha256")
        finally:
            client.close()
        assert seen.accepted and seen.signature_scheme == "rsa_pkcs1_sha256", result.error
        seen_by[client.name] = spy_signs(log.read_text()[start:])
    [(mechanism, parts)] = seen_by["java"]
    assert mechanism == "CKM_SHA256_RSA_PKCS" and sum(parts) > 1000
    assert seen_by["java-nocombined"] == [("CKM_RSA_PKCS", [51])]


def test_key_created_after_the_jvm_started_is_found_without_a_second_login(
        java, keyring, spy, tmp_path):
    module, env, log = spy
    client = JavaClient()
    try:
        result, seen = run(client, keyring, keyring.keys["a"], TLSVersion.TLS13, tmp_path,
                           module=module, env=env)
        assert seen.accepted, result.error
        late = keyring.provision([("late", "p256")], tmp_path / "late-ca")["late"]
        result, seen = run(client, keyring, late, TLSVersion.TLS13, tmp_path, module=module,
                           env=env, client_ca=tmp_path / "late-ca" / "ca.pem")
        assert seen.accepted and seen.client_subject == f"CN={late.label}", result.error
        assert "reloading KeyStore" in result.log_path.read_text()
    finally:
        client.close()
    assert spy_calls(log.read_text()).count("C_Login") == 1


def test_wrong_pin_is_one_login_and_never_retried(keyring, spy, tmp_path):
    module, env, log = spy
    client = JavaClient()
    try:
        for _ in range(3):
            result, seen = run(client, keyring, keyring.keys["a"], TLSVersion.TLS12,
                               tmp_path, module=module, env=env, pin="0000")
            assert result.ckr == "CKR_PIN_INCORRECT", result.error
            assert result.error == "CKR_PIN_INCORRECT"
            assert not seen.connected and result.returncode == 1 and not result.timed_out
        text = result.log_path.read_text()
        assert "not sent again" in text
    finally:
        client.close()
    first = (tmp_path / "case-0.log").read_text()
    assert "FailedLoginException" in first and "PKCS11Exception: CKR_PIN_INCORRECT" in first
    assert spy_calls(log.read_text()).count("C_Login") == 1


# -- a JVM that dies or hangs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fragile() -> Iterator[JavaClient]:
    client = JavaClient()
    if client.unavailable_reason():
        pytest.skip(f"Requires a JDK: {client.unavailable_reason()}")
    yield client
    client.close()


@pytest.fixture
def silent_server() -> Iterator[tuple[int, threading.Event]]:
    """A TCP server that accepts and never answers; the event is set on accept."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        held.append(conn)
        accepted.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    for conn in held:
        conn.close()
    listener.close()


def silent_job(keyring: Keyring, port: int, log: Path, timeout_s: float) -> HandshakeJob:
    key = keyring.keys["a"]
    return HandshakeJob("127.0.0.1", port, TLSVersion.TLS12, keyring.store.module, keyring.token,
                        keyring.pin, key.label, key.id_hex, key.cert, keyring.ca_dir / "ca.pem",
                        log, timeout_s=timeout_s, env=keyring.store.env)


def test_jvm_death_fails_this_case_and_the_next_case_gets_a_fresh_jvm(
        fragile, keyring, silent_server, tmp_path):
    result, seen = run(fragile, keyring, keyring.keys["a"], TLSVersion.TLS12, tmp_path / "warm")
    assert seen.accepted, result.error
    [pid] = fragile.jvm_pids()
    port, accepted = silent_server

    def crash_when_connected() -> None:
        if accepted.wait(20):
            os.kill(pid, signal.SIGSEGV)  # HotSpot takes it for a crash in native code

    threading.Thread(target=crash_when_connected, daemon=True).start()
    died = fragile.handshake(silent_job(keyring, port, tmp_path / "died.log", 20))
    assert died.returncode is not None and died.returncode < 0 and not died.timed_out
    assert died.error and died.error.startswith("JVM died (killed by signal")
    assert "SIGSEGV" in died.error, died.error
    log = died.log_path.read_text()
    assert "died during this case" in log and "p11tls: TLSv1.2 to 127.0.0.1" in log
    assert "A fatal error has been detected by the Java Runtime Environment" in log

    result, seen = run(fragile, keyring, keyring.keys["a"], TLSVersion.TLS12, tmp_path / "after")
    assert seen.accepted, result.error
    assert fragile.jvm_pids() != [pid]


def test_slow_server_is_a_timeout_and_the_jvm_stays_warm(fragile, keyring, silent_server,
                                                          tmp_path):
    port, _ = silent_server
    run(fragile, keyring, keyring.keys["a"], TLSVersion.TLS13, tmp_path / "warm")
    pids = fragile.jvm_pids()
    start = time.monotonic()
    result = fragile.handshake(silent_job(keyring, port, tmp_path / "slow.log", 1.0))
    assert result.timed_out and "Read timed out" in (result.error or "")
    assert 0.9 < time.monotonic() - start < 5
    assert fragile.jvm_pids() == pids


def test_hung_jvm_is_killed_after_the_timeout(fragile, keyring, silent_server, tmp_path):
    port, _ = silent_server
    run(fragile, keyring, keyring.keys["a"], TLSVersion.TLS13, tmp_path / "warm")
    [pid] = fragile.jvm_pids()
    # A negative grace makes the harness give up before the JVM's own socket
    # timeout, which is how a JVM stuck in C_Sign looks from outside.
    fragile.answer_grace_s = -0.7
    try:
        result = fragile.handshake(silent_job(keyring, port, tmp_path / "hung.log", 1.0))
    finally:
        del fragile.answer_grace_s
    assert result.timed_out and result.returncode is None
    assert "killing its process group" in result.log_path.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    result, seen = run(fragile, keyring, keyring.keys["a"], TLSVersion.TLS13, tmp_path / "after")
    assert seen.accepted, result.error


# -- set-up errors --------------------------------------------------------------------------


def test_missing_jdk_is_tool_missing(tmp_path, monkeypatch):
    client = JavaClient(java_home=tmp_path / "no-jdk")
    assert "javac not found in" in (client.unavailable_reason() or "")
    with pytest.raises(ToolMissing, match="openjdk-17-jdk-headless"):
        client.version()
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing) as info:
        find_jdk()
    assert str(info.value) == ("javac not found: install a JDK >= 11 "
                               "(openjdk-17-jdk-headless) or set JAVA_HOME / --java")


def test_jdk_is_found_from_java_home_or_a_java_binary(java, monkeypatch):
    home = java.jdk().home
    assert find_jdk(home / "bin" / "java").home == home
    monkeypatch.setenv("JAVA_HOME", str(home))
    jdk = find_jdk()
    assert jdk.feature >= 17 and jdk.version in java.version()


def test_bad_extra_config_line_is_a_config_error_with_sunpkcs11s_words(keyring, tmp_path):
    client = JavaClient(extra_config=["noSuchKeyword = 1"])
    try:
        with pytest.raises(ConfigError, match="noSuchKeyword"):
            run(client, keyring, keyring.keys["a"], TLSVersion.TLS12, tmp_path)
        with pytest.raises(ConfigError):  # remembered: no second JVM start
            run(client, keyring, keyring.keys["a"], TLSVersion.TLS12, tmp_path)
    finally:
        client.close()


def test_unknown_token_label_is_a_token_error(java, keyring, tmp_path):
    job = replace(silent_job(keyring, 1, tmp_path / "case.log", 5), token_label="no-such-token")
    with pytest.raises(TokenError, match="no token labelled 'no-such-token'.*'java'"):
        JavaClient().handshake(job)


@pytest.mark.parametrize("line, message", [
    ("slot = 3", "sets slot itself"),
    ("enabledMechanisms = { CKM_ECDSA }", "KeyStore"),
    ("a\nb", "one line per option"),
])
def test_extra_config_lines_are_checked(line, message):
    with pytest.raises(ConfigError, match=message):
        JavaClient(extra_config=[line])


def test_configs_of_both_variants(tmp_path):
    from harness.clients.java import SlotRef

    extra = ["enabledMechanisms = { CKM_ECDSA CKM_RSA_PKCS_PSS KeyStore }"]
    plain = JavaClient(extra_config=extra).p11_config(Path("/m/lib p11.so"), SlotRef(7, 2))
    assert plain.splitlines()[:3] == ["name = p11tls-java", 'library = "/m/lib p11.so"',
                                      "slot = 7"]
    assert extra[0] in plain and "disabledMechanisms" not in plain
    nocombined = JavaNoCombinedClient().p11_config(Path("/m/p11.so"), SlotRef(2**32 - 1, 2))
    assert "slotListIndex = 2" in nocombined
    block = nocombined[nocombined.index("disabledMechanisms = {"):]
    assert set(re.findall(r"CKM_\w+", block)) == set(COMBINED_MECHANISMS)
    for family in ("CKM_ECDSA_SHA256", "CKM_SHA256_RSA_PKCS", "CKM_SHA512_RSA_PKCS_PSS"):
        assert family in COMBINED_MECHANISMS
    assert JavaNoCombinedClient.name == "java-nocombined"
    assert JavaNoCombinedClient.marker == "java_nocombined"
    # the user's disabledMechanisms (the README's workaround for java) joins the
    # variant's own list: SunPKCS11 takes the keyword only once
    merged = JavaNoCombinedClient(extra_config=["disabledMechanisms = { CKM_ECDSA }"]) \
        .p11_config(Path("/m/p11.so"), SlotRef(2, 0))
    assert merged.count("disabledMechanisms") == 1
    block = merged[merged.index("disabledMechanisms = {"):]
    assert set(re.findall(r"CKM_\w+", block)) == {*COMBINED_MECHANISMS, "CKM_ECDSA"}


def test_classes_are_cached_and_rebuilt_when_the_source_changes(java, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "P11TlsClient.java").write_text("public class P11TlsClient {}\n")
    first = build_classes(java.jdk(), src, tmp_path / "cache")
    again = build_classes(java.jdk(), src, tmp_path / "cache")
    assert first == again and (first / "P11TlsClient.class").is_file()
    (src / "P11TlsClient.java").write_text("public class P11TlsClient { int changed; }\n")
    rebuilt = build_classes(java.jdk(), src, tmp_path / "cache")
    assert rebuilt != first and (rebuilt / "P11TlsClient.class").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [first.name, rebuilt.name]), "no temporary directories left behind"


def test_line_protocol_round_trip():
    line = encode_request("handshake", label="a b=c+d%", port=1)
    assert line == "handshake label=a+b%3Dc%2Bd%25 port=1"
    assert decode_answer("fail ckr=CKR_GENERAL_ERROR error=x+y%3D1\n") == (
        "fail", {"ckr": "CKR_GENERAL_ERROR", "error": "x y=1"})
