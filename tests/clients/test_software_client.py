"""The `software` control client: the imported key from memory, no token,
against the real harness server. Positive cases for each default key type and
TLS version; negative controls: a key that does not match the certificate, a
key whose private part is wrong (the server rejects the CertificateVerify), a
certificate from another CA, a server that never answers; generated keys skip;
the key bytes never reach a file."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness.clients import CLIENTS
from harness.clients.base import HandshakeJob
from harness.clients.software import NEEDS_IMPORT, SoftwareClient
from harness.matrix.cases import FORCED_RSA_PKCS1, Case, cases
from harness.matrix.keys import KEYS, Provisioning
from harness.plugin import MARKERS
from harness.reports.layout import CLIENT_ORDER
from harness.run.config import resolve
from harness.tls.ca import TestCA, write_pem
from harness.tls.version import TLSVersion

PROFILES = sorted(p.stem for p in (Path(__file__).parents[2] / "harness/profiles").glob("*.toml"))
MATRIX_TEST = (Path(__file__).parents[1] / "test_matrix.py").read_text()


def software(key: str, tls: TLSVersion, sigalgs: str | None = None) -> Case:
    return Case("software", KEYS[key], Provisioning.IMPORT, tls, sigalgs)


def run_with(runner, case: Case, **changes):
    """Run `case` with its provisioned key changed (another private key or certificate)."""
    slot = (case.key.name, case.provisioning)
    key = runner.key(case.key, case.provisioning)
    runner.keys[slot] = dataclasses.replace(key, **changes)
    try:
        return runner.run(case)
    finally:
        runner.keys[slot] = key


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
@pytest.mark.parametrize("key", ["rsa2048", "p256", "p384"])
def test_software_control_handshakes(p11tls_runner, key, tls):
    record = p11tls_runner.run(software(key, tls))
    assert record.outcome == "ok", record.error
    assert record.negotiated_version == f"TLSv{tls.value}"
    family = "rsa_" if key.startswith("rsa") else "ecdsa_"
    assert record.signature_scheme and record.signature_scheme.startswith(family)
    # the certificate on the token, the key from memory, and no PKCS#11 call
    assert p11tls_runner.key(KEYS[key], Provisioning.IMPORT).label in record.client_subject
    assert record.sign is None and record.calls is None
    assert "handshake ok" in Path(record.logs["client"]).read_text()


def test_software_control_under_forced_rsa_pkcs1(p11tls_runner):
    record = p11tls_runner.run(software("rsa2048", TLSVersion.TLS12, FORCED_RSA_PKCS1))
    assert record.outcome == "ok", record.error
    assert record.signature_scheme == "rsa_pkcs1_sha256"


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
def test_a_key_that_does_not_match_the_certificate_fails(p11tls_runner, tls):
    stranger = ec.generate_private_key(ec.SECP256R1())
    record = run_with(p11tls_runner, software("p256", tls), private_key=stranger)
    assert record.outcome == "fail"
    assert "key values mismatch" in record.error  # OpenSSL refuses it before connecting
    assert record.signature_scheme is None


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
def test_a_wrong_private_part_is_rejected_by_the_server(p11tls_runner, tls):
    """Same public key as the certificate, so the client cannot tell; the
    signature is wrong, and only the server's check of the CertificateVerify
    can catch it."""
    case = software("rsa2048", tls)
    n = p11tls_runner.key(case.key, case.provisioning).private_key.private_numbers()
    wrong = rsa.RSAPrivateNumbers(
        n.p, n.q, n.d ^ 2, n.dmp1 ^ 2, n.dmq1 ^ 2, n.iqmp, n.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    record = run_with(p11tls_runner, case, private_key=wrong)
    assert record.outcome == "fail"
    assert record.signature_scheme  # the server did receive a CertificateVerify
    assert "decrypt error" in record.error


def test_a_certificate_from_another_ca_fails(p11tls_runner, tmp_path):
    case = software("p256", TLSVersion.TLS13)
    key = p11tls_runner.key(case.key, case.provisioning)
    public_key = x509.load_pem_x509_certificate(key.cert_pem.read_bytes()).public_key()
    other = TestCA(tmp_path / "other-ca", name="another CA")
    foreign = write_pem(other.issue_client_cert(public_key, key.label), tmp_path / "foreign.pem")
    record = run_with(p11tls_runner, case, cert_pem=foreign)
    assert record.outcome == "fail"
    assert "unknown ca" in record.error or "certificate verify failed" in record.error


def test_generated_keys_skip_with_the_reason(p11tls_runner):
    record = p11tls_runner.run(Case("software", KEYS["p256"], Provisioning.GENERATE,
                                 TLSVersion.TLS12))
    assert record.outcome == "skip" and record.error == NEEDS_IMPORT
    assert p11tls_runner.key(KEYS["p256"], Provisioning.GENERATE).private_key is None
    assert p11tls_runner.key(KEYS["p256"], Provisioning.IMPORT).private_key is not None


def test_the_matrix_gives_software_imported_keys_only():
    matrix = cases(["openssl-engine", "software"], (KEYS["rsa2048"], KEYS["p256"]))
    ours = [c for c in matrix if c.client == "software"]
    assert {c.provisioning for c in ours} == {Provisioning.IMPORT}
    assert len(ours) == 2 * 2 + 1  # two keys × two TLS versions, and the forced RSA row
    forced = [c.case_id for c in ours if c.client_sigalgs]
    assert forced == ["software-rsa2048-import-tls12-rsa_pkcs1_sha256"]
    # negative control: a token client keeps both provisionings
    engine = {c.provisioning for c in matrix if c.client == "openssl-engine"}
    assert engine == {Provisioning.GENERATE, Provisioning.IMPORT}


def test_software_is_a_registered_client_marker_and_the_last_column():
    assert CLIENTS["software"] is SoftwareClient and "software" in MARKERS
    assert resolve({"p11_clients": "all"}, {}, {}).clients[-1] == "software"
    assert CLIENT_ORDER[-1] == "software"
    client = SoftwareClient()
    assert client.unavailable_reason() is None
    assert client.version().startswith("pyOpenSSL ") and "OpenSSL" in client.version()[10:]


def test_the_client_honours_its_timeout(p11tls_runner, tmp_path):
    """A server that accepts and never answers: the handshake stops at timeout_s."""
    key = p11tls_runner.key(KEYS["p256"], Provisioning.IMPORT)
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    job = HandshakeJob(
        host="127.0.0.1", port=silent.getsockname()[1], tls=TLSVersion.TLS13,
        module=Path("unused"), token_label="unused", pin="", key_label=key.label,
        key_id_hex=key.id_hex, cert_pem=key.cert_pem, ca_pem=p11tls_runner.ca.ca_pem,
        log_path=tmp_path / "client.log", timeout_s=0.5, private_key=key.private_key)
    try:
        start = time.monotonic()
        result = SoftwareClient().handshake(job)
        elapsed = time.monotonic() - start
    finally:
        silent.close()
        for conn in held:
            conn.close()
    assert result.timed_out and result.returncode is None
    assert 0.5 <= elapsed < 3 and "timed out after 0.5 s" in result.error
    ok = p11tls_runner.run(software("p256", TLSVersion.TLS13))  # negative control
    assert ok.outcome == "ok" and ok.duration_s < 3


def _secrets(private_key) -> dict[str, bytes]:
    """Every form of the key's private bytes that could end up in a file."""
    forms = {}
    formats = {"PKCS8": serialization.PrivateFormat.PKCS8,
               "traditional": serialization.PrivateFormat.TraditionalOpenSSL}
    encodings = {"DER": serialization.Encoding.DER, "PEM": serialization.Encoding.PEM}
    for fmt_name, fmt in formats.items():
        for enc_name, enc in encodings.items():
            data = private_key.private_bytes(enc, fmt, serialization.NoEncryption())
            if enc_name == "PEM":  # one base64 line of the body
                data = data.splitlines()[2]
            forms[f"{fmt_name} {enc_name}"] = data
    numbers = private_key.private_numbers()
    value = numbers.d if isinstance(private_key, rsa.RSAPrivateKey) else numbers.private_value
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    forms["private value"] = raw
    forms["private value (hex)"] = raw.hex().encode()
    forms["private value (HEX)"] = raw.hex().upper().encode()
    return forms


def _files_holding(directory: Path, needles: dict[str, bytes]) -> list[str]:
    found = []
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {name}" for name, needle in needles.items() if needle in data]
    return found


def test_the_key_never_reaches_a_file(p11tls_runner, p11tls_settings, tmp_path):
    for key in ("rsa2048", "p256", "p384"):
        for tls in TLSVersion:
            assert p11tls_runner.run(software(key, tls)).outcome == "ok"
        provisioned = p11tls_runner.key(KEYS[key], Provisioning.IMPORT)
        assert "private_key" not in repr(provisioned)
        needles = _secrets(provisioned.private_key)
        for directory in (p11tls_runner.workdir, p11tls_settings.reports):
            assert _files_holding(directory, needles) == []
        # negative control: the scan does find the key where it is written
        leak = tmp_path / key / "leak.json"
        leak.parent.mkdir()
        leak.write_text(json.dumps({"pem": needles["PKCS8 PEM"].decode()}))
        assert _files_holding(tmp_path / key, needles) == [f"{leak}: PKCS8 PEM"]


def run_profile(pytester: pytest.Pytester, profile: str, *args: str):
    pytester.makepyfile(test_matrix=MATRIX_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--p11-profile", profile,
                                           *args, timeout=300)
    records = json.loads((pytester.path / "reports/results.json").read_text())["cases"]
    return result, {r["case_id"]: r for r in records}


@pytest.mark.parametrize("profile", PROFILES)
def test_software_column_passes_under_every_profile(pytester, profile):
    """The control never touches the token, so no emulation may change it; the
    token client of the same rows is the negative control where the profile
    bites (nitrokey refuses the EC import, openpgp-card has no RSA-PSS)."""
    result, records = run_profile(pytester, profile, "--p11-keys", "rsa2048,p256",
                                  "--p11-clients", "software,gnutls")
    assert result.ret == 0, result.stdout.str()[-3000:]
    ours = {i: r for i, r in records.items() if r["client"] == "software"}
    assert len(ours) == 5
    assert all(r["outcome"] == "ok" for r in ours.values()), ours
    if profile == "nitrokey-start-opensc":
        token = records["gnutls-p256-import-tls12"]
        assert token["error"] == "provisioning: CKR_GENERAL_ERROR"
    if profile == "openpgp-card":
        assert records["gnutls-rsa2048-import-tls13"]["outcome"] == "fail"
