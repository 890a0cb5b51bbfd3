"""The interposer's emulation layer (issue 5), one feature at a time, through a
profile's interposer lines, on a throw-away SoftHSM token.

Everything that loads a PKCS#11 module runs in a child process
(tests/interposer/emulation_driver.py), as in test_interposer.py. Each feature is shown
against a control: the same calls through the interposer without the profile.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from harness.errors import ConfigError, ToolMissing
from harness.installed import PKCS11_SPY, find_library
from harness.interposer import CONF_ENV, build_interposer, write_interposer_config
from harness.interposer.calls import RecordedCall, load_calls, sign_summary
from harness.interposer.profile import Profile, load_profile
from harness.token.softhsm import TemporarySoftHSM

TESTS = Path(__file__).parent
EMULATION_DRIVER = TESTS / "emulation_driver.py"
INTERPOSER_DRIVER = TESTS / "interposer_driver.py"
PIN = "emu-" + secrets.token_hex(4)
TOKEN = "emulation"
P256_PARAMS = "06082a8648ce3d030107"

OK, GENERAL_ERROR, DEVICE_REMOVED, DATA_LEN_RANGE = 0x0, 0x5, 0x32, 0x21
FUNCTION_NOT_SUPPORTED, MECHANISM_INVALID, SIGNATURE_INVALID = 0x54, 0x70, 0xC0
PIN_INCORRECT, PIN_LOCKED, OPERATION_ACTIVE, BUFFER_TOO_SMALL = 0xA0, 0xA4, 0x90, 0x150
CKF_SIGN = 0x800
COUNT_LOW, FINAL_TRY, LOCKED = 0x10000, 0x20000, 0x40000
CKS_RO_PUBLIC_SESSION, CKS_RO_USER_FUNCTIONS = 0, 1
SESSION_HANDLE_INVALID, CRYPTOKI_NOT_INITIALIZED = 0xB3, 0x190


def data(n: int, seed: int = 0) -> bytes:
    """The driver's test input (emulation_driver.data)."""
    return bytes((i * 7 + seed) % 256 for i in range(n))


def _int(value: int, length: int | None = None) -> str:
    return value.to_bytes(length or (value.bit_length() + 7) // 8, "big").hex()


def ec_args(key: ec.EllipticCurvePrivateKey, label: str) -> dict[str, str]:
    point = key.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    return {"type": "ec", "label": label, "id": "01", "ec_params": P256_PARAMS,
            "d": _int(key.private_numbers().private_value, 32),
            "ec_point": (bytes([0x04, len(point)]) + point).hex()}


def rsa_args(key: rsa.RSAPrivateKey, label: str) -> dict[str, str]:
    n = key.private_numbers()
    return {"type": "rsa", "label": label, "id": "02", "n": _int(n.public_numbers.n),
            "e": _int(n.public_numbers.e),
            **{name: _int(getattr(n, name)) for name in ("d", "p", "q", "dmp1", "dmq1", "iqmp")}}


@dataclass
class Run:
    out: dict[str, Any]
    calls: list[RecordedCall]
    stderr: str


@dataclass
class Bench:
    """A token holding an EC P-256 key "ec" and an RSA-2048 key "rsa" (both
    halves), and the interposer to reach it through."""

    hsm: TemporarySoftHSM
    interposer: Path
    ec_key: ec.EllipticCurvePrivateKey
    rsa_key: rsa.RSAPrivateKey

    def run(self, directory: Path, scenario: str, args: dict[str, Any],
            profile: Profile | None = None, *, name: str = "run", real: Path | None = None,
            lines: list[str] | None = None, env: dict[str, str] | None = None,
            driver: Path = EMULATION_DRIVER, module: Path | None = None,
            check: bool = True) -> Run:
        """One driver scenario through the interposer: the profile's lines (or
        `lines`), forwarding to `real` (SoftHSM by default)."""
        record = directory / f"{name}.jsonl"
        record.unlink(missing_ok=True)
        extra = profile.interposer_lines() if profile else (lines or [])
        conf = write_interposer_config(real or self.hsm.module, record,
                                       directory / f"{name}.conf", extra)
        child_env = {k: v for k, v in os.environ.items() if k not in (CONF_ENV, "PKCS11SPY")}
        child_env.update({**self.hsm.env, **conf, **(env or {})})
        proc = subprocess.run(
            [sys.executable, str(driver), scenario, str(module or self.interposer),
             json.dumps(args)],
            env=child_env, capture_output=True, text=True, timeout=60, check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"driver {scenario} exited {proc.returncode}:\n{proc.stderr}")
        out = json.loads(proc.stdout) if proc.returncode == 0 else {}
        return Run(out, load_calls(record) if record.exists() else [], proc.stderr)

    def sign(self, directory: Path, ops: list[dict[str, Any]], profile: Profile | None,
             **kwargs: Any) -> Run:
        return self.run(directory, "sign", {"token": TOKEN, "pin": PIN, "ops": ops}, profile,
                        **kwargs)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    directory = tmp_path_factory.mktemp("emulation")
    try:
        interposer = build_interposer()
        hsm = TemporarySoftHSM(directory / "softhsm")
        hsm.init_token(TOKEN, PIN)
    except ToolMissing as exc:
        pytest.skip(str(exc))
    b = Bench(hsm, interposer, ec.generate_private_key(ec.SECP256R1()),
              rsa.generate_private_key(public_exponent=65537, key_size=2048))
    b.run(directory, "import", {"token": TOKEN, "pin": PIN,
                                "keys": [ec_args(b.ec_key, "ec"), rsa_args(b.rsa_key, "rsa")]},
          driver=INTERPOSER_DRIVER, module=hsm.module)
    return b


def profile_from(directory: Path, text: str, name: str = "test-profile") -> Profile:
    path = directory / f"{name}.toml"
    path.write_text(text)
    return load_profile(path)


def verify_ecdsa(key: ec.EllipticCurvePrivateKey, sig_hex: str, message: bytes,
                 algorithm: hashes.HashAlgorithm) -> None:
    """Raises InvalidSignature unless sig (PKCS#11's r||s) is ECDSA over hash(message)."""
    raw = bytes.fromhex(sig_hex)
    half = len(raw) // 2
    der = encode_dss_signature(int.from_bytes(raw[:half], "big"),
                               int.from_bytes(raw[half:], "big"))
    key.public_key().verify(der, message, ec.ECDSA(algorithm))


def op_calls(calls: list[RecordedCall], index: int) -> list[RecordedCall]:
    """The record up to the end of signing operation `index` (0-based)."""
    inits = [i for i, c in enumerate(calls) if c.fn == "C_SignInit"]
    end = inits[index + 1] if index + 1 < len(inits) else len(calls)
    return calls[:end]


def emulated(calls: list[RecordedCall], fn: str) -> list[str | None]:
    return [c.raw.get("emulated") for c in calls if c.fn == fn]


# ------------------------------------------------------------ mechanisms


def test_hidden_mechanisms_are_gone_and_refused(bench: Bench, tmp_path: Path) -> None:
    args: dict[str, Any] = {
        "token": TOKEN, "pin": PIN,
        "info": ["CKM_RSA_PKCS_PSS", "CKM_SHA256_RSA_PKCS_PSS", "CKM_RSA_PKCS"],
        "init": [["CKM_RSA_PKCS_PSS", "rsa", 32], ["CKM_SHA256_RSA_PKCS_PSS", "rsa", 100],
                 ["CKM_RSA_X_509", "rsa", 256], ["CKM_RSA_PKCS", "rsa", 51]]}
    hidden = {"CKM_RSA_PKCS_PSS", "CKM_SHA256_RSA_PKCS_PSS", "CKM_RSA_X_509"}
    plain = bench.run(tmp_path, "mechanisms", args, name="plain").out
    emulated_ = bench.run(tmp_path, "mechanisms", args, load_profile("openpgp-card"))
    out = emulated_.out

    # Control: the real token lists, describes and signs with all of them.
    assert hidden <= set(plain["list"]["names"])
    assert all(plain["info"][m]["rv"] == OK for m in args["info"])
    assert plain["init"] == {m[0]: [OK, OK] for m in args["init"]}
    # With the profile they are gone from the list, its count and the info ...
    # (the driver names a few mechanisms; SHA1/224/384/512 PSS show as numbers)
    all_hidden = hidden | {"0xe", "0x47", "0x44", "0x45"}
    assert all_hidden <= set(plain["list"]["names"])
    assert out["list"]["names"] == sorted(set(plain["list"]["names"]) - all_hidden)
    count = len(out["list"]["names"])
    assert out["list"]["query"] == [OK, count] and out["list"]["full"] == [OK, count]
    assert out["list"]["small"] == [BUFFER_TOO_SMALL, count]
    assert count == plain["list"]["query"][1] - 7  # all six PSS mechanisms and raw RSA
    assert out["info"]["CKM_RSA_PKCS_PSS"] == {"rv": MECHANISM_INVALID}
    assert out["info"]["CKM_SHA256_RSA_PKCS_PSS"] == {"rv": MECHANISM_INVALID}
    assert out["info"]["CKM_RSA_PKCS"] == plain["info"]["CKM_RSA_PKCS"]
    # ... and C_SignInit refuses them, while PKCS#1 v1.5 still signs.
    assert out["init"] == {"CKM_RSA_PKCS_PSS": [MECHANISM_INVALID, None],
                           "CKM_SHA256_RSA_PKCS_PSS": [MECHANISM_INVALID, None],
                           "CKM_RSA_X_509": [MECHANISM_INVALID, None],
                           "CKM_RSA_PKCS": [OK, OK]}
    # The record says which answers were the emulation's.
    calls = emulated_.calls
    assert emulated(calls, "C_SignInit") == ["hidden", "hidden", "hidden", None]
    assert set(emulated(calls, "C_GetMechanismList")) == {"mechanism_list"}
    listed = [c for c in calls if c.fn == "C_GetMechanismList" and "mechanisms" in c.raw][-1]
    assert listed.raw["real_count"] == plain["list"]["query"][1]
    assert not hidden & set(listed.raw["mechanisms"])
    pss_init = next(c for c in calls if c.fn == "C_SignInit")
    assert pss_init.mechanism == "CKM_RSA_PKCS_PSS" and pss_init.rv == "CKR_MECHANISM_INVALID"
    assert pss_init.us < 5000  # refused here, not by the token


def test_hidden_key_generation_mechanism(bench: Bench, tmp_path: Path) -> None:
    """hide covers every function that takes a mechanism, not only C_*Init."""
    profile = profile_from(tmp_path, '[mechanisms]\nhide = ["CKM_EC_KEY_PAIR_GEN"]\n')
    label = "gen-" + secrets.token_hex(3)
    args: dict[str, Any] = {"token": TOKEN, "pin": PIN, "imports": [], "generated_label": label}
    refused = bench.run(tmp_path, "create", args, profile)
    assert refused.out == {label: "MechanismInvalid", "found": {label: 0}}
    assert emulated(refused.calls, "C_GenerateKeyPair") == ["hidden"]
    allowed = bench.run(tmp_path, "create", args, name="plain").out  # control
    assert allowed == {label: "created", "found": {label: 1}}


def test_combined_mechanism_signs_what_verifies(bench: Bench, tmp_path: Path) -> None:
    profile = profile_from(tmp_path, 'name = "t"\n[mechanisms]\n'
                                     'add_combined = ["CKM_ECDSA_SHA256", "CKM_ECDSA_SHA384"]\n')
    mech_args: dict[str, Any] = {"token": TOKEN, "pin": PIN,
                 "info": ["CKM_ECDSA", "CKM_ECDSA_SHA256", "CKM_ECDSA_SHA384"],
                 "init": [["CKM_ECDSA_SHA256", "ec", 100]]}
    # Control: SoftHSM 2.6 has raw CKM_ECDSA only.
    plain = bench.run(tmp_path, "mechanisms", mech_args, name="plain").out
    assert "CKM_ECDSA" in plain["list"]["names"]
    assert "CKM_ECDSA_SHA256" not in plain["list"]["names"]
    assert plain["info"]["CKM_ECDSA_SHA256"] == {"rv": MECHANISM_INVALID}
    assert plain["init"]["CKM_ECDSA_SHA256"] == [MECHANISM_INVALID, None]

    listed = bench.run(tmp_path, "mechanisms", mech_args, profile, name="listed").out
    assert {"CKM_ECDSA", "CKM_ECDSA_SHA256", "CKM_ECDSA_SHA384"} <= set(listed["list"]["names"])
    assert listed["list"]["query"][1] == plain["list"]["query"][1] + 2
    base = listed["info"]["CKM_ECDSA"]
    assert listed["info"]["CKM_ECDSA_SHA256"] == listed["info"]["CKM_ECDSA_SHA384"] == base
    assert base["flags"] & CKF_SIGN and base["min"] <= 256 <= base["max"]

    ops: list[dict[str, Any]] = [
        {"mech": "CKM_ECDSA_SHA256", "key": "ec", "len": 1000, "query": True, "small": True},
        {"mech": "CKM_ECDSA_SHA256", "key": "ec", "parts": [1, 500, 0, 499], "seed": 3,
         "query": True, "small": True},
        {"mech": "CKM_ECDSA_SHA384", "key": "ec", "len": 5000, "seed": 5},
        {"mech": "CKM_ECDSA_SHA384", "key": "ec", "parts": [2000, 3000], "seed": 7},
        {"verify": True, "mech": "CKM_ECDSA_SHA256", "key": "ec", "len": 1000, "sig_of": 0},
        {"verify": True, "mech": "CKM_ECDSA_SHA256", "key": "ec", "len": 1000, "seed": 3,
         "sig_of": 1, "multipart": True},
        {"verify": True, "mech": "CKM_ECDSA_SHA256", "key": "ec", "len": 1000, "seed": 1,
         "sig_of": 0},
    ]
    run = bench.sign(tmp_path, ops, profile)
    single, multi, sha384, sha384_multi, good, good_multi, wrong = run.out["results"]
    # Size queries and a too-small buffer keep the operation, as PKCS#11 says.
    assert single["calls"] == [["C_Sign (size query)", OK, 64],
                               ["C_Sign (1-byte buffer)", BUFFER_TOO_SMALL, 64],
                               ["C_Sign", OK, 64]]
    assert multi["calls"] == [["C_SignUpdate", OK]] * 4 + [
        ["C_SignFinal (size query)", OK, 64], ["C_SignFinal (1-byte buffer)", BUFFER_TOO_SMALL, 64],
        ["C_SignFinal", OK, 64]]
    verify_ecdsa(bench.ec_key, single["sig"], data(1000), hashes.SHA256())
    verify_ecdsa(bench.ec_key, multi["sig"], data(1000, 3), hashes.SHA256())
    verify_ecdsa(bench.ec_key, sha384["sig"], data(5000, 5), hashes.SHA384())
    verify_ecdsa(bench.ec_key, sha384_multi["sig"], data(5000, 7), hashes.SHA384())
    # Negative controls: other data, or the other hash, does not verify.
    with pytest.raises(InvalidSignature):
        verify_ecdsa(bench.ec_key, single["sig"], data(1000, 1), hashes.SHA256())
    with pytest.raises(InvalidSignature):
        verify_ecdsa(bench.ec_key, single["sig"], data(1000), hashes.SHA384())
    # Verification with the combined mechanism goes the same way.
    assert good == {"init": OK, "rv": OK}
    assert good_multi == {"init": OK, "update": [OK, OK], "rv": OK}
    assert wrong == {"init": OK, "rv": SIGNATURE_INVALID}

    # The record keeps what the client asked for, and says what went below.
    calls = run.calls
    init = next(c for c in calls if c.fn == "C_SignInit")
    assert (init.mechanism, init.raw["real_mechanism"], init.raw["emulated"]) == (
        "CKM_ECDSA_SHA256", "CKM_ECDSA", "combined")
    last_sign = [c for c in op_calls(calls, 0) if c.fn == "C_Sign"][-1]
    assert (last_sign.in_len, last_sign.raw["real_in_len"], last_sign.raw["emulated"]) == (
        1000, 32, "combined")
    assert sign_summary(op_calls(calls, 1)) == {
        "mechanism": "CKM_ECDSA_SHA256", "params": None, "parts": 4, "input_bytes": 1000,
        "rv": "CKR_OK"}
    finals = [c for c in op_calls(calls, 3) if c.fn == "C_SignFinal"]
    assert finals[-1].raw["real_in_len"] == 48


# ------------------------------------------------------------- the limit

LIMIT_PROFILE = """name = "limit"
[mechanisms]
add_combined = ["CKM_ECDSA_SHA256", "CKM_ECDSA_SHA384"]
[sign]
max_input_bytes = 2048
limit_mechanisms = ["CKM_ECDSA_SHA256"]
over_limit_rv = "CKR_GENERAL_ERROR"
"""


def test_limit_exactly_max_passes_and_one_more_fails(bench: Bench, tmp_path: Path) -> None:
    sha256 = {"mech": "CKM_ECDSA_SHA256", "key": "ec"}
    ops: list[dict[str, Any]] = [
        {**sha256, "len": 2048},                        # 0: exactly the limit
        {**sha256, "len": 2049, "seed": 1},             # 1: one more
        {**sha256, "parts": [1024, 1024], "seed": 2},   # 2: the limit in parts
        {**sha256, "parts": [1024, 1025], "seed": 3},   # 3: one more, in parts
        {**sha256, "parts": [2048, 1, 10], "seed": 4},  # 4: the part that crosses fails
        {**sha256, "len": 2049, "query": True},         # 5: a size query hands over nothing
        {"mech": "CKM_ECDSA_SHA384", "key": "ec", "len": 6000},  # 6: not limited
        {"mech": "CKM_ECDSA", "key": "ec", "len": 32},  # 7: not limited, not combined
    ]
    run = bench.sign(tmp_path, ops, profile_from(tmp_path, LIMIT_PROFILE))
    results = run.out["results"]
    assert [r["init"] for r in results] == [OK] * 8  # each failure ended its operation
    assert [r["calls"] for r in results] == [
        [["C_Sign", OK, 64]],
        [["C_Sign", GENERAL_ERROR, 512]],
        [["C_SignUpdate", OK], ["C_SignUpdate", OK], ["C_SignFinal", OK, 64]],
        [["C_SignUpdate", OK], ["C_SignUpdate", GENERAL_ERROR]],
        [["C_SignUpdate", OK], ["C_SignUpdate", GENERAL_ERROR]],
        [["C_Sign (size query)", OK, 64], ["C_Sign", GENERAL_ERROR, 64]],
        [["C_Sign", OK, 64]],
        [["C_Sign", OK, 64]],
    ]
    verify_ecdsa(bench.ec_key, results[0]["sig"], data(2048), hashes.SHA256())
    verify_ecdsa(bench.ec_key, results[2]["sig"], data(2048, 2), hashes.SHA256())
    verify_ecdsa(bench.ec_key, results[6]["sig"], data(6000), hashes.SHA384())

    calls = run.calls
    assert (sign_summary(op_calls(calls, 0)) or {}).get("rv") == "CKR_OK"
    assert sign_summary(op_calls(calls, 3)) == {
        "mechanism": "CKM_ECDSA_SHA256", "params": None, "parts": 2, "input_bytes": 2049,
        "rv": "CKR_GENERAL_ERROR"}
    crossing = [c for c in calls if c.raw.get("emulated") == "limit"]
    assert [(c.fn, c.in_len, c.raw["op_in_len"], c.raw["limit_bytes"]) for c in crossing] == [
        ("C_Sign", 2049, 2049, 2048), ("C_SignUpdate", 1025, 2049, 2048),
        ("C_SignUpdate", 1, 2049, 2048), ("C_Sign", 2049, 2049, 2048)]


def test_limit_on_every_mechanism_of_the_real_token(bench: Bench, tmp_path: Path) -> None:
    """No limit_mechanisms: the limit applies to all, here to SoftHSM's own
    CKM_SHA256_RSA_PKCS, forwarded part by part."""
    profile = profile_from(tmp_path, '[sign]\nmax_input_bytes = 100\n'
                                     'over_limit_rv = "CKR_DATA_LEN_RANGE"\n')
    rsa_sha256 = {"mech": "CKM_SHA256_RSA_PKCS", "key": "rsa"}
    ops: list[dict[str, Any]] = [
        {**rsa_sha256, "parts": [60, 40]}, {**rsa_sha256, "parts": [60, 41]},
        {**rsa_sha256, "len": 101}, {**rsa_sha256, "len": 100, "seed": 1},
        {"mech": "CKM_ECDSA", "key": "ec", "len": 32}]
    results = bench.sign(tmp_path, ops, profile).out["results"]
    assert [r["init"] for r in results] == [OK] * 5
    assert [r["calls"][-1][:2] for r in results] == [
        ["C_SignFinal", OK], ["C_SignUpdate", DATA_LEN_RANGE], ["C_Sign", DATA_LEN_RANGE],
        ["C_Sign", OK], ["C_Sign", OK]]
    public = bench.rsa_key.public_key()
    public.verify(bytes.fromhex(results[0]["sig"]), data(100), padding.PKCS1v15(),
                  hashes.SHA256())
    public.verify(bytes.fromhex(results[3]["sig"]), data(100, 1), padding.PKCS1v15(),
                  hashes.SHA256())


def test_seed_001_with_the_shipped_picohsm_profile(bench: Bench, tmp_path: Path) -> None:
    """Seed 001: SunPKCS11 hands the whole TLS 1.2 transcript (6039 bytes in the
    report) to CKM_ECDSA_SHA256 and the card fails; SHA-384 and TLS 1.3 work."""
    transcript = [4, 1000, 2000, 3035]
    ops: list[dict[str, Any]] = [
        {"mech": "CKM_ECDSA_SHA256", "key": "ec", "parts": transcript},
        {"mech": "CKM_ECDSA_SHA384", "key": "ec", "parts": transcript},
        {"mech": "CKM_ECDSA_SHA256", "key": "ec", "len": 146},  # TLS 1.3
        {"mech": "CKM_ECDSA", "key": "ec", "len": 32}]  # host-hashed, as OpenSSL does
    run = bench.sign(tmp_path, ops, load_profile("picohsm-opensc"))
    results = run.out["results"]
    assert results[0]["calls"][-1] == ["C_SignUpdate", GENERAL_ERROR]
    assert [r["calls"][-1][:2] for r in results[1:]] == [
        ["C_SignFinal", OK], ["C_Sign", OK], ["C_Sign", OK]]
    verify_ecdsa(bench.ec_key, results[1]["sig"], data(6039), hashes.SHA384())
    summary = sign_summary(op_calls(run.calls, 0))
    assert summary == {"mechanism": "CKM_ECDSA_SHA256", "params": None, "parts": 3,
                       "input_bytes": 3004, "rv": "CKR_GENERAL_ERROR"}
    assert summary["input_bytes"] > 2048


def test_multipart_refused(bench: Bench, tmp_path: Path) -> None:
    profile = profile_from(tmp_path, '[mechanisms]\nadd_combined = ["CKM_ECDSA_SHA256"]\n'
                                     '[sign]\nmultipart = false\n')
    ops: list[dict[str, Any]] = [
        {"mech": "CKM_SHA256_RSA_PKCS", "key": "rsa", "parts": [10, 10]},
        {"mech": "CKM_SHA256_RSA_PKCS", "key": "rsa", "len": 20},
        {"mech": "CKM_ECDSA_SHA256", "key": "ec", "parts": [10]},
        {"mech": "CKM_ECDSA_SHA256", "key": "ec", "len": 10}]
    refused = bench.sign(tmp_path, ops, profile)
    assert [r["init"] for r in refused.out["results"]] == [OK] * 4  # refusals end operations
    assert [r["calls"][-1][:2] for r in refused.out["results"]] == [
        ["C_SignUpdate", FUNCTION_NOT_SUPPORTED], ["C_Sign", OK],
        ["C_SignUpdate", FUNCTION_NOT_SUPPORTED], ["C_Sign", OK]]
    assert emulated(refused.calls, "C_SignUpdate") == ["no_multipart", "no_multipart"]
    # Control: multi-part signing through the interposer without the profile.
    plain = bench.sign(tmp_path, ops[:2], None, name="plain").out["results"]
    assert plain[0]["calls"] == [["C_SignUpdate", OK], ["C_SignUpdate", OK],
                                 ["C_SignFinal", OK, 256]]


# --------------------------------------------------------------- objects


def test_refused_import_with_the_shipped_nitrokey_profile(bench: Bench, tmp_path: Path) -> None:
    suffix = secrets.token_hex(3)
    imports = [ec_args(ec.generate_private_key(ec.SECP256R1()), f"imp-ec-{suffix}"),
               rsa_args(rsa.generate_private_key(public_exponent=65537, key_size=2048),
                        f"imp-rsa-{suffix}")]
    args = {"token": TOKEN, "pin": PIN, "imports": imports, "generated_label": f"gen-{suffix}"}
    run = bench.run(tmp_path, "create", args, load_profile("nitrokey-start-opensc"))
    assert run.out == {
        f"imp-ec-{suffix}": "GeneralError", f"imp-rsa-{suffix}": "created",
        f"gen-{suffix}": "created",
        "found": {f"imp-ec-{suffix}": 0, f"imp-rsa-{suffix}": 1, f"gen-{suffix}": 1}}
    creates = [c for c in run.calls if c.fn == "C_CreateObject"]
    assert [(c.raw.get("emulated"), c.rv, c.raw["object"]) for c in creates][:2] == [
        ("refuse_create", "CKR_GENERAL_ERROR", None), (None, "CKR_OK", creates[1].raw["object"])]
    template = {a["type"]: a.get("value") for a in creates[0].raw["template"]}
    assert (template["CKA_CLASS"], template["CKA_KEY_TYPE"]) == ("CKO_PRIVATE_KEY", "CKK_EC")
    # Control: without the profile the same EC import works.
    control = {**args, "imports": [{**imports[0], "label": f"ctl-ec-{suffix}"}],
               "generated_label": f"ctl-gen-{suffix}"}
    assert bench.run(tmp_path, "create", control, name="plain").out[f"ctl-ec-{suffix}"] == "created"


# ------------------------------------------------------------------- PIN

PIN_STEPS = ["flags", "wrong", "flags", "wrong", "flags", "right", "flags", "state", "logout",
             "wrong", "wrong", "wrong", "flags", "right", "state", "wrong", "flags"]


def test_pin_counter_flags_and_lock(bench: Bench, tmp_path: Path) -> None:
    # A token of its own: the real token's state after wrong PINs must not leak
    # into other tests.
    label = "pin-" + secrets.token_hex(3)
    bench.hsm.init_token(label, PIN)
    spy = find_library(*PKCS11_SPY)
    spy_log = tmp_path / "spy.log"
    real, env = (spy, {"PKCS11SPY": str(bench.hsm.module), "PKCS11SPY_OUTPUT": str(spy_log)}) \
        if spy else (None, {})
    profile = profile_from(tmp_path, "[pin]\nmax_tries = 3\n")
    args = {"token": label, "pin": PIN, "steps": PIN_STEPS}
    run = bench.run(tmp_path, "pin", args, profile, real=real, env=env)
    pin_bits = COUNT_LOW | FINAL_TRY | LOCKED
    seen = [[step, value & pin_bits if step == "flags" else value]
            for step, value in run.out["steps"]]
    assert seen == [
        ["flags", 0],
        ["wrong", PIN_INCORRECT], ["flags", COUNT_LOW],
        ["wrong", PIN_INCORRECT], ["flags", COUNT_LOW | FINAL_TRY],
        ["right", OK], ["flags", 0], ["state", CKS_RO_USER_FUNCTIONS], ["logout", OK],
        ["wrong", PIN_INCORRECT], ["wrong", PIN_INCORRECT], ["wrong", PIN_INCORRECT],
        ["flags", COUNT_LOW | LOCKED],
        ["right", PIN_LOCKED], ["state", CKS_RO_PUBLIC_SESSION],  # the right PIN went nowhere
        ["wrong", PIN_LOCKED], ["flags", COUNT_LOW | LOCKED],
    ]
    logins = [c for c in run.calls if c.fn == "C_Login"]
    assert [c.raw["pin_tries_left"] for c in logins] == [2, 1, 3, 2, 1, 0, 0, 0]
    assert [c.raw.get("emulated") for c in logins] == [
        "pin_counter", "pin_counter", "pin_counter", "pin_counter", "pin_counter",
        "pin_counter", "pin_locked", "pin_locked"]
    assert set(emulated(run.calls, "C_GetTokenInfo")) == {"pin_flags"}
    if spy:  # the real module saw the six logins before the lock and none after
        assert len(re.findall(r"^\d+: C_Login$", spy_log.read_text(), re.MULTILINE)) == 6
    # Control: SoftHSM itself never locks; through the interposer without the
    # profile the right PIN still works after four wrong ones.
    plain = bench.run(tmp_path, "pin", {**args, "steps": ["wrong"] * 4 + ["right"]}, name="plain")
    assert [rv for _, rv in plain.out["steps"]] == [PIN_INCORRECT] * 4 + [OK]


def test_token_pin_flags_reported_as_the_profile_says(bench: Bench, tmp_path: Path) -> None:
    """[pin] token_flags: C_GetTokenInfo shows the flags ORed into the real
    token's, marked in the record; C_Login is unchanged (the right PIN works)."""
    profile = profile_from(tmp_path, '[pin]\ntoken_flags = ["CKF_USER_PIN_COUNT_LOW", '
                                     '"CKF_USER_PIN_FINAL_TRY"]\n')
    assert profile.interposer_lines() == [
        "token_pin_flags 0x10000 0x20000 # CKF_USER_PIN_COUNT_LOW CKF_USER_PIN_FINAL_TRY"]
    args = {"token": TOKEN, "pin": PIN, "steps": ["flags", "right", "flags"]}
    run = bench.run(tmp_path, "pin", args, profile)
    pin_bits = COUNT_LOW | FINAL_TRY | LOCKED
    assert [[step, value & pin_bits if step == "flags" else value]
            for step, value in run.out["steps"]] == [
        ["flags", COUNT_LOW | FINAL_TRY], ["right", OK], ["flags", COUNT_LOW | FINAL_TRY]]
    infos = [c for c in run.calls if c.fn == "C_GetTokenInfo"]
    assert {c.raw.get("emulated") for c in infos} == {"pin_flags"}
    for c in infos:
        real, shown = int(c.raw["real_token_flags"], 16), int(c.raw["token_flags"], 16)
        assert real & pin_bits == 0 and shown == real | COUNT_LOW | FINAL_TRY
    locked = profile_from(tmp_path, '[pin]\ntoken_flags = ["CKF_USER_PIN_LOCKED"]\n', "locked")
    run = bench.run(tmp_path, "pin", {**args, "steps": ["flags"]}, locked, name="locked")
    assert run.out["steps"][0][1] & pin_bits == LOCKED
    # Control: without the profile the token reports none of them.
    plain = bench.run(tmp_path, "pin", args, None, name="plain")
    assert [v & pin_bits for step, v in plain.out["steps"] if step == "flags"] == [0, 0]
    assert all("emulated" not in c.raw for c in plain.calls if c.fn == "C_GetTokenInfo")


@pytest.mark.parametrize("value, problem", [
    ('["CKF_USER_PIN_TO_BE_CHANGED"]', "unknown token PIN flag"),
    ('"CKF_USER_PIN_LOCKED"', "expected a list of names"),
])
def test_token_pin_flags_refused_when_unknown(tmp_path: Path, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"pin\.token_flags.*{problem}"):
        profile_from(tmp_path, f"[pin]\ntoken_flags = {value}\n")


# ------------------------------------------------- per-session emulated state


@pytest.fixture(scope="module")
def token_b(bench: Bench) -> str:
    """A second token (another slot) for the per-slot tests."""
    label = "emulation-b"
    bench.hsm.init_token(label, PIN)
    return label


def _session_state(bench: Bench, directory: Path, token_b: str, name: str,
                   **args: Any) -> Run:
    profile = profile_from(directory, '[mechanisms]\nadd_combined = ["CKM_ECDSA_SHA256"]\n'
                                      '[faults]\nlatency_ms = { C_SignUpdate = 300 }\n', name)
    return bench.run(directory, "session_state", {"token": TOKEN, "pin": PIN,
                                                  "token_b": token_b, "delay_s": 0.1, **args},
                     profile, name=name, env={"MALLOC_PERTURB_": "165"})


def test_close_all_sessions_of_another_slot_keeps_the_operation(
    bench: Bench, tmp_path: Path, token_b: str
) -> None:
    """C_CloseAllSessions(slot B) leaves the emulated signing in slot A's
    session alone: its C_SignFinal signs all the data; closing slot A's
    sessions (the control) ends it."""
    run = _session_state(bench, tmp_path, token_b, "close-b", what="close_all", close="b",
                         during=False)
    assert run.out["rv"] == {"init": OK, "update1": OK, "close_all": OK, "update2": OK,
                             "final": OK}
    verify_ecdsa(bench.ec_key, run.out["sig"], data(300, 9), hashes.SHA256())
    control = _session_state(bench, tmp_path, token_b, "close-a", what="close_all", close="a",
                             during=False)
    assert control.out["rv"]["close_all"] == OK
    assert control.out["rv"]["update2"] == control.out["rv"]["final"] == SESSION_HANDLE_INVALID


@pytest.mark.parametrize("what", ["finalize", "close_all"])
def test_state_in_use_survives_finalize_from_another_thread(
    bench: Bench, tmp_path: Path, token_b: str, what: str
) -> None:
    """C_Finalize / C_CloseAllSessions in one thread while another is inside an
    emulated C_SignUpdate (held there by a latency): the call in progress
    finishes on state it still owns (no use after free: with MALLOC_PERTURB_
    freed state is garbage, and the sanitizer build reports it), and the
    operation is gone for the calls after."""
    run = _session_state(bench, tmp_path, token_b, what, what=what, close="a", during=True)
    rv = run.out["rv"]
    assert rv["init"] == OK and rv.get(what) == OK
    assert rv["update1"] == OK  # emulated: hashed here, on state the call holds
    gone = CRYPTOKI_NOT_INITIALIZED if what == "finalize" else SESSION_HANDLE_INVALID
    assert rv["update2"] == rv["final"] == gone
    update = next(c for c in run.calls if c.fn == "C_SignUpdate")
    assert update.raw.get("latency_ms") == 300 and update.raw.get("emulated") == "combined"


# ---------------------------------------------------------------- faults


def test_latency_with_the_shipped_slow_card_profile(bench: Bench, tmp_path: Path) -> None:
    ops: list[dict[str, Any]] = [
        {"mech": "CKM_ECDSA", "key": "ec", "len": 32, "query": True},
        {"mech": "CKM_SHA256_RSA_PKCS", "key": "rsa", "parts": [10, 10], "query": True}]
    slow = bench.sign(tmp_path, ops, load_profile("slow-card"))
    fast = bench.sign(tmp_path, ops, None, name="plain")
    for with_profile, without in zip(slow.out["results"], fast.out["results"]):
        assert with_profile["calls"][-1][1] == OK and without["calls"][-1][1] == OK
        assert with_profile["seconds"] >= 0.150
        assert without["seconds"] < 0.100, "SoftHSM alone should sign far quicker"
    delayed = [(c.fn, c.query, c.raw.get("latency_ms")) for c in slow.calls
               if c.fn in ("C_Sign", "C_SignFinal")]
    assert delayed == [("C_Sign", True, None), ("C_Sign", False, 150),
                       ("C_SignFinal", True, None), ("C_SignFinal", False, 150)]
    assert all(c.us >= 150_000 for c in slow.calls if c.raw.get("latency_ms"))


def test_fail_after(bench: Bench, tmp_path: Path) -> None:
    profile = profile_from(tmp_path, '[faults]\nfail_after = { function = "C_Sign", calls = 3, '
                                     'rv = "CKR_DEVICE_REMOVED" }\n')
    ops: list[dict[str, Any]] = [{"mech": "CKM_ECDSA", "key": "ec", "len": 32, "query": True}] * 5
    run = bench.sign(tmp_path, ops, profile)
    results = run.out["results"]
    # Size queries do not count: three whole signatures, then the device is gone.
    assert [r["init"] for r in results] == [OK] * 5
    assert [[call[:2] for call in r["calls"]] for r in results] == [
        [["C_Sign (size query)", OK], ["C_Sign", OK]]] * 3 + [
        [["C_Sign (size query)", DEVICE_REMOVED]]] * 2
    assert [c.raw.get("emulated") for c in run.calls if c.fn == "C_Sign"] == [None] * 6 + [
        "fail_after"] * 2


# ---------------------------------------------------- threads and config


def test_threads_sign_with_a_combined_mechanism_at_once(bench: Bench, tmp_path: Path) -> None:
    profile = profile_from(tmp_path, '[mechanisms]\nadd_combined = ["CKM_ECDSA_SHA256"]\n'
                                     '[sign]\nmax_input_bytes = 2048\n')
    threads, signatures = 6, 25
    run = bench.run(tmp_path, "threads", {"token": TOKEN, "pin": PIN, "threads": threads,
                                          "signatures": signatures}, profile)
    assert run.out["errors"] == []
    for index, sigs in run.out["signatures"].items():
        for sig in sigs[:: signatures // 3]:
            verify_ecdsa(bench.ec_key, sig, data(300, int(index)), hashes.SHA256())
    seqs = [c.seq for c in run.calls]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))  # no line lost or torn
    finals = [c for c in run.calls if c.fn == "C_SignFinal"]
    assert len(finals) == threads * signatures
    assert {c.raw["emulated"] for c in finals} == {"combined"}


@pytest.mark.parametrize("line, message", [
    ("hide CKM_NOPE", "not a mechanism number or known CKM_ name: hide"),
    ("add_combined CKM_SHA256_RSA_PKCS", "only CKM_ECDSA_SHA1/224/256/384/512 can be added"),
    ("sign_multipart maybe", "expected yes or no: sign_multipart"),
    ("sign_max_input -1", "not a number: sign_max_input"),
    ("sign_over_limit_rv CKR_OK", "not an error code"),
    ("refuse_create CKO_PRIVATE_KEY CKK_EC", "expected CLASS KEY_TYPE|any RV after key "),
    ("refuse_create CKO_NOPE any 5", "not an object class"),
    ("pin_max_tries 0", "not a number of tries (1 or more)"),
    ("token_pin_flags CKF_SO_PIN_LOCKED", "not CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY"),
    ("token_pin_flags 0x1", "not CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY"),
    ("token_write_protected no", "not yes: token_write_protected"),
    ("latency C_Bogus 5", "not a PKCS#11 2.40 function name (C_Sign, ...): latency"),
    ("fail_after C_Sign 3", "expected C_FUNCTION CALLS RV after key fail_after"),
    ("hang_after C_Sign", "expected C_FUNCTION CALLS after key hang_after"),
    ("hang_after C_Sign many", "not a number of calls: hang_after"),
    ("bogus 1", "unknown key (known: module, record, hide, add_combined, "),
], ids=lambda v: v.split()[0] if " " in v else None)
def test_bad_emulation_lines_fail_in_c_initialize(bench: Bench, tmp_path: Path, line: str,
                                                  message: str) -> None:
    run = bench.run(tmp_path, "initialize", {}, lines=[line], driver=INTERPOSER_DRIVER)
    assert run.out == {"rv": GENERAL_ERROR}
    assert f"line 4: {message}" in run.stderr and run.stderr.count("\n") == 1


def test_names_numbers_and_comments_are_all_read(bench: Bench, tmp_path: Path) -> None:
    lines = ["hide CKM_RSA_PKCS_PSS # by name", "hide 0x43", "add_combined 4164",
             "refuse_create CKO_PRIVATE_KEY any CKR_GENERAL_ERROR", "sign_multipart yes",
             "latency C_Sign 0", "fail_after C_Digest 0 CKR_DEVICE_REMOVED # never used",
             "hang_after C_Digest 0 # never used"]
    run = bench.run(tmp_path, "initialize", {}, lines=lines, driver=INTERPOSER_DRIVER)
    assert run.out == {"rv": OK} and run.stderr == ""
