"""Read-only mode: the keys already on a token (--p11-existing, --p11-key), run
for real in a child pytest on a SoftHSM2 token prepared the way people have
their cards: keys made by pkcs11-tool, certificates from a CA the harness has
never seen, and one key without a certificate."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness.errors import ConfigError
from harness.interposer import build_interposer, write_interposer_config
from harness.interposer.calls import parse_calls
from harness.matrix.cases import cases
from harness.matrix.keys import KEYS, Provisioning
from harness.token.existing_keys import WRITE_FUNCTIONS, parse_key_uri, writes_in

MATRIX_TEST = (Path(__file__).parents[1] / "test_matrix.py").read_text()
FOREIGN_CA = "Users' Own Issuing CA"


def tool(store, token, *args: str, login: bool = True) -> str:
    cmd = ["pkcs11-tool", "--module", str(store.module), "--token-label", token.label, *args]
    if login:
        cmd += ["--login", "--pin", token.pin]
    return subprocess.run(cmd, capture_output=True, text=True, check=True,
                          env={**os.environ, **store.env}).stdout


def foreign_cert(public_der: bytes, name: str, ca_name: str) -> bytes:
    """A client certificate from a CA the harness does not know."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Users")]))
            .issuer_name(issuer)
            .public_key(serialization.load_der_public_key(public_der))  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def users_token(softhsm_store, tmp_path):
    """The spare token with what a user has on a card: two key pairs with
    certificates from two different CAs (P-256 id 01, RSA-2048 id 02) and a
    P-256 key without one (id 03)."""
    store, token = softhsm_store
    for key_id, label, key_type, with_cert in (("01", "signing key", "EC:prime256v1", True),
                                               ("02", "rsa-auth", "rsa:2048", True),
                                               ("03", "bare", "EC:prime256v1", False)):
        tool(store, token, "--keypairgen", "--key-type", key_type, "--id", key_id,
             "--label", label)
        if with_cert:
            public = tmp_path / f"{key_id}.pub"
            tool(store, token, "--read-object", "--type", "pubkey", "--id", key_id,
                 "--output-file", str(public))
            cert = tmp_path / f"{key_id}.der"
            cert.write_bytes(foreign_cert(public.read_bytes(), f"User {label}",
                                          f"{FOREIGN_CA} {key_id}"))
            tool(store, token, "--write-object", str(cert), "--type", "cert", "--id", key_id,
                 "--label", label)
    return store, token


def run_matrix(pytester, store, token, *args: str):
    pytester.makepyfile(test_matrix=MATRIX_TEST)
    mp = pytest.MonkeyPatch()
    try:
        for name, value in store.env.items():
            mp.setenv(name, value)
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", f"--p11-module={store.module}",
            f"--p11-token-label={token.label}", f"--p11-pin={token.pin}",
            "--p11-reports=reports", *args, timeout=300)
    finally:
        mp.undo()


def records(pytester) -> dict[str, dict]:
    data = json.loads((pytester.path / "reports" / "results.json").read_text())["cases"]
    return {r["case_id"]: r for r in data["records"]} if isinstance(data, dict) else {
        r["case_id"]: r for r in data}


def test_existing_keys_run_read_only_and_the_token_is_unchanged(pytester, users_token):
    store, token = users_token
    before = tool(store, token, "--list-objects")
    result = run_matrix(pytester, store, token, "--p11-existing",
                        "--p11-clients=openssl-engine,gnutls,java,nss")
    after = tool(store, token, "--list-objects")
    assert after == before  # nothing created, destroyed or changed
    got = records(pytester)
    # the two key pairs with a certificate, by label; the bare key is not a pair
    assert {r["key"] for r in got.values()} == {"signing_key", "rsa-auth"}
    assert all(r["provisioning"] == "existing" for r in got.values())
    ok = [r for r in got.values() if r["outcome"] == "ok"]
    # every client takes the foreign-CA certificate of the key under test; Java
    # and NSS chose it by the issuer the server named (two CAs: only that key's issuer)
    assert {r["client"] for r in ok} == {"openssl-engine", "gnutls", "java", "nss"}
    for r in ok:
        label = "signing key" if r["key"] == "signing_key" else "rsa-auth"
        assert r["client_subject"] == f"O=Users,CN=User {label}", r["case_id"]
    for record in got.values():
        functions = {c["fn"] for c in record["calls"] or ()}
        assert "C_Sign" in functions or "C_SignInit" in functions, record["case_id"]
        assert not functions & WRITE_FUNCTIONS, record["case_id"]
    module = next(iter(got.values()))["module"]
    assert module["read_only"] is True
    described = {k["label"]: k for k in module["existing_keys"]}
    assert described["signing key"]["id"] == "01" and described["signing key"]["type"] == "p256"
    assert described["rsa-auth"]["type"] == "rsa2048"
    assert f"{FOREIGN_CA} 02" in described["rsa-auth"]["issuer"]
    assert f"{FOREIGN_CA} 01" in described["signing key"]["issuer"]
    assert "the run wrote nothing" in result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("passed", 0) >= 10, outcomes


def test_a_key_without_certificate_by_uri_runs_where_a_file_certificate_works(
        pytester, users_token):
    store, token = users_token
    before = tool(store, token, "--list-objects")
    result = run_matrix(pytester, store, token, "--p11-key=pkcs11:object=bare;type=private",
                        "--p11-clients=gnutls,java", "-m", "not rsa_pkcs1_sha256")
    assert tool(store, token, "--list-objects") == before
    got = records(pytester)
    assert set(got) == {"gnutls-bare-existing-tls12", "gnutls-bare-existing-tls13",
                        "java-bare-existing-tls12", "java-bare-existing-tls13"}
    assert got["gnutls-bare-existing-tls12"]["outcome"] == "ok"
    assert got["gnutls-bare-existing-tls13"]["outcome"] == "ok"
    # negative control: Java needs the certificate on the token, and none is written
    assert got["java-bare-existing-tls12"]["outcome"] == "skip"
    assert "has no certificate on the token" in got["java-bare-existing-tls12"]["error"]
    result.assert_outcomes(passed=2, skipped=2)


def test_bad_key_uri_and_unknown_key_are_one_line_errors(pytester, users_token):
    store, token = users_token
    result = run_matrix(pytester, store, token, "--p11-key=pkcs11:object=nothing-here")
    assert result.ret != 0
    assert "no certificate or public key on the token matches" in result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    with pytest.raises(ConfigError, match="must not carry a PIN"):
        parse_key_uri("pkcs11:object=x?pin-value=1234")
    with pytest.raises(ConfigError, match="names no key"):
        parse_key_uri("pkcs11:token=abc")
    assert parse_key_uri("pkcs11:id=%01%ff;type=private").key_id == b"\x01\xff"


def test_write_detection_sees_a_real_write_and_not_a_read(softhsm_store, tmp_path):
    """The check every read-only case makes, on records of real calls: a key
    generation through the interposer is a write, a listing is not."""
    store, token = softhsm_store
    interposer = build_interposer()
    seen = {}
    for name, args in (("read", ["--list-objects"]),
                       ("write", ["--keypairgen", "--key-type", "EC:prime256v1",
                                  "--id", "09", "--label", "w"])):
        record = tmp_path / f"{name}.jsonl"
        env = write_interposer_config(store.module, record, tmp_path / f"{name}.conf")
        subprocess.run(["pkcs11-tool", "--module", str(interposer), "--token-label",
                        token.label, "--login", "--pin", token.pin, *args],
                       capture_output=True, check=True, env={**os.environ, **store.env, **env})
        seen[name] = writes_in(parse_calls(record.read_bytes()))
    assert seen == {"read": [], "write": ["C_GenerateKeyPair"]}


def test_existing_keys_have_their_own_case_axis():
    spec = KEYS["p256"]
    made = cases(["gnutls", "software"], (spec,))
    existing = cases(["gnutls", "software"], (spec,), existing=True)
    assert {c.provisioning for c in made} == {Provisioning.GENERATE, Provisioning.IMPORT}
    assert {c.provisioning for c in existing} == {Provisioning.EXISTING}
    assert {c.client for c in existing} == {"gnutls"}  # no host copy for the control
    assert "existing" in existing[0].markers


CKF_RW_SESSION = 0x2


def session_flags(record: dict) -> list[int]:
    return [int(c["flags"], 16) for c in record["calls"] or () if c["fn"] == "C_OpenSession"]


def test_read_only_runs_open_read_only_sessions_in_every_client(pytester, users_token):
    """Java's SunPKCS11 opens read-write sessions unless the token says it is
    write-protected: in a read-only run the interposer tells the JVM so."""
    store, token = users_token
    run_matrix(pytester, store, token, "--p11-existing",
               "--p11-clients=java,java-nocombined,openssl-engine,gnutls", "-k", "tls13")
    got = records(pytester)
    assert {r["client"] for r in got.values()} == {"java", "java-nocombined", "openssl-engine",
                                                    "gnutls"}
    opened: dict[str, list[int]] = {}
    for record in got.values():  # a warm JVM opens its sessions in its first case
        opened.setdefault(record["client"], []).extend(session_flags(record))
    assert all(opened.values()), opened
    assert all(not f & CKF_RW_SESSION for flags in opened.values() for f in flags), opened


def test_a_provisioning_run_leaves_java_s_sessions_as_they_are(pytester, softhsm_store):
    """Negative control: outside read-only mode SunPKCS11 opens read-write sessions."""
    store, token = softhsm_store
    run_matrix(pytester, store, token, "--p11-clients=java", "-k", "p256 and generate and tls13")
    (record,) = records(pytester).values()
    assert any(f & CKF_RW_SESSION for f in session_flags(record)), session_flags(record)


@pytest.mark.parametrize("uri, message", [
    ("pkcs11:object=%ff;type=private", "object= is not UTF-8 text"),
    ("pkcs11:object=x;type=%ff", "type= is not UTF-8 text"),
    ("pkcs11:token=%ff;object=x", "token= is not UTF-8 text"),
    ("pkcs11:object=a;object=b", "object= is given twice"),
    ("pkcs11:id=01;serial=1;serial=2", "serial= is given twice"),
], ids=["object", "type", "token", "repeated-object", "repeated-serial"])
def test_bad_uri_values_are_one_line(uri, message):
    """Issue 23 rows 6 and 9: these were a UnicodeDecodeError traceback, or the
    last of two object= kept silently."""
    with pytest.raises(ConfigError, match=message):
        parse_key_uri(uri)
    assert parse_key_uri("pkcs11:object=caf%c3%a9").label == "café"  # control: UTF-8


@pytest.mark.parametrize("attributes", ["token=not-mine", "serial=0000", "manufacturer=ACME",
                                        "model=PIV_II"])
def test_a_uri_naming_another_token_is_refused(pytester, users_token, attributes):
    """Issue 23 row 9: `token=not-mine;serial=0000` tested the key on this token
    and exited 0. Control: the token's own label and serial select the key."""
    store, token = users_token
    uri = f"pkcs11:{attributes};object=signing%20key;type=private"
    result = run_matrix(pytester, store, token, f"--p11-key={uri}", "--collect-only", "-q")
    assert result.ret != 0
    err = result.stderr.str()
    assert "is not this token" in err and "Traceback" not in err + result.stdout.str()
    serial = tool(store, token, "--list-token-slots", login=False).split("serial num")[1]
    serial = serial.split(":", 1)[1].splitlines()[0].strip()
    good = f"pkcs11:token=spare;serial={serial};object=signing%20key;type=private"
    ok = run_matrix(pytester, store, token, f"--p11-key={good}", "--collect-only", "-q")
    assert ok.ret == 0, ok.stderr.str()


def test_read_only_curl_without_a_certificate_runs_or_says_why(pytester, users_token):
    """Issue 23 row 8: curl through the libp11 engine failed 3/3 on a key with
    no certificate ("cannot load client cert"): the engine gives curl the
    certificate from the token only. It is skipped with that reason; through
    pkcs11-provider (curl 8.12+) it runs with the certificate made in memory.
    Control: the same key with gnutls (a file certificate) passes."""
    from harness.clients.curl import CurlClient

    if CurlClient().unavailable_reason():
        pytest.skip(CurlClient().unavailable_reason())
    store, token = users_token
    result = run_matrix(pytester, store, token, "--p11-key=pkcs11:object=bare;type=private",
                        "--p11-clients=curl,gnutls", "-m", "not rsa_pkcs1_sha256")
    got = records(pytester)
    assert got["gnutls-bare-existing-tls12"]["outcome"] == "ok"
    curl = got["curl-bare-existing-tls12"]
    if CurlClient().cert_from_file:
        assert curl["outcome"] == "ok", curl
    else:
        assert curl["outcome"] == "skip" and "has no certificate on the token" in curl["error"]
    assert result.parseoutcomes().get("failed", 0) == 0


def test_a_session_copy_is_no_write_to_the_token():
    """pkcs11-provider copies a key into a session object and destroys it again
    (Debian 13): not a write. A token copy, or destroying a token object, is."""
    copy = {"fn": "C_CopyObject", "object": 3, "new_object": 5,
            "template": [{"type": "CKA_TOKEN", "len": 1, "value": False}]}
    assert writes_in([copy, {"fn": "C_DestroyObject", "object": 5}]) == []
    on_token = {**copy, "template": [{"type": "CKA_TOKEN", "len": 1, "value": True}]}
    assert writes_in([on_token, {"fn": "C_DestroyObject", "object": 5}]) == [
        "C_CopyObject", "C_DestroyObject"]
    assert writes_in([copy, {"fn": "C_DestroyObject", "object": 3}]) == ["C_DestroyObject"]
