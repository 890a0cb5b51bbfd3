"""The recording interposer (issue 3): it forwards every call unchanged, records
what it should and nothing secret, keeps whole lines under threads, and is
built on demand from its source.

Everything that loads a PKCS#11 module runs in a child process
(tests/interposer/interposer_driver.py): one process may load a module path only once,
and this pytest process keeps SoftHSM for the TLS matrix.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from harness.errors import ConfigError, HarnessError, ToolMissing
from harness.installed import OPENSC, PKCS11_SPY, find_library
from harness.interposer import (
    CONF_ENV,
    INTERPOSER_SOURCE,
    _find_pkcs11_include,
    build_interposer,
    write_interposer_config,
    write_names_header,
)
from harness.interposer.calls import RecordedCall, format_calls_table, load_calls, sign_summary
from harness.token.softhsm import TemporarySoftHSM

sys.path.insert(0, str(Path(__file__).parent))
from interposer_driver import JUNK as JUNK_SESSION
from interposer_driver import SIGNATURES

DRIVER = Path(__file__).with_name("interposer_driver.py")
PIN = "pin-" + secrets.token_hex(6)  # distinctive: it must not turn up by chance
TOKEN = "interposer-test"
P256_PARAMS = "06082a8648ce3d030107"
OAEP_MESSAGE = b"a message for OAEP (SHA-1: all SoftHSM 2.6 offers)"
CKR = {"CKR_OK": 0x0, "CKR_BUFFER_TOO_SMALL": 0x150, "CKR_ATTRIBUTE_SENSITIVE": 0x11,
       "CKR_CRYPTOKI_NOT_INITIALIZED": 0x190, "CKR_OPERATION_NOT_INITIALIZED": 0x91,
       "CKR_SESSION_HANDLE_INVALID": 0xB3, "CKR_GENERAL_ERROR": 0x5,
       "CKR_FUNCTION_NOT_SUPPORTED": 0x54, "CKR_ARGUMENTS_BAD": 0x7}
SPY = find_library(*PKCS11_SPY) or Path("pkcs11-spy.so (not installed)")
OPENSC = find_library(*OPENSC) or Path("opensc-pkcs11.so (not installed)")  # PKCS#11 3.0 (0.23)
CKR_ARGUMENTS_BAD = CKR["CKR_ARGUMENTS_BAD"]


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or (value.bit_length() + 7) // 8, "big")


@dataclass
class Store:
    """A throw-away SoftHSM token holding the keys imported through the interposer."""

    hsm: TemporarySoftHSM
    directory: Path
    ec_key: ec.EllipticCurvePrivateKey
    rsa_key: rsa.RSAPrivateKey
    import_record: Path

    @property
    def secret_values(self) -> dict[str, bytes]:
        """Every private value handed to C_CreateObject."""
        e = self.ec_key.private_numbers()
        r = self.rsa_key.private_numbers()
        return {"ec d": _int_bytes(e.private_value, 32), "rsa d": _int_bytes(r.d),
                "rsa p": _int_bytes(r.p), "rsa q": _int_bytes(r.q),
                "rsa dmp1": _int_bytes(r.dmp1), "rsa dmq1": _int_bytes(r.dmq1),
                "rsa iqmp": _int_bytes(r.iqmp)}

    def key_args(self) -> list[dict[str, str]]:
        e = self.ec_key.private_numbers()
        point = self.ec_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        r = self.rsa_key.private_numbers()
        return [
            {"type": "ec", "label": "ec", "id": "01", "ec_params": P256_PARAMS,
             "d": _int_bytes(e.private_value, 32).hex(),
             "ec_point": (bytes([0x04, len(point)]) + point).hex()},
            {"type": "rsa", "label": "rsa", "id": "02",
             "n": _int_bytes(r.public_numbers.n).hex(), "e": _int_bytes(r.public_numbers.e).hex(),
             **{name: _int_bytes(getattr(r, name)).hex()
                for name in ("d", "p", "q", "dmp1", "dmq1", "iqmp")}},
        ]


@dataclass
class Run:
    out: dict[str, Any]
    stderr: str
    returncode: int


def run_driver(store: Store, scenario: str, module: Path, args: dict[str, Any] | None = None,
               env: dict[str, str] | None = None, check: bool = True) -> Run:
    """One driver scenario in a child process with an explicit environment."""
    child_env = {k: v for k, v in os.environ.items() if k not in (CONF_ENV, "PKCS11SPY")}
    child_env.update(store.hsm.env)
    child_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, str(DRIVER), scenario, str(module), json.dumps(args or {})],
        env=child_env, capture_output=True, text=True, timeout=60, check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"driver {scenario} on {module} exited {proc.returncode}:\n{proc.stderr}")
    out = json.loads(proc.stdout) if proc.returncode == 0 else {}
    return Run(out, proc.stderr, proc.returncode)


def through_interposer(store: Store, name: str) -> tuple[dict[str, str], Path]:
    """Config for one run through the interposer: (env, record file)."""
    record = store.directory / f"{name}.jsonl"
    env = write_interposer_config(store.hsm.module, record, store.directory / f"{name}.conf")
    return env, record


@pytest.fixture(scope="module")
def interposer() -> Path:
    try:
        return build_interposer()
    except ToolMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, interposer: Path) -> Store:
    directory = tmp_path_factory.mktemp("interposer")
    try:
        hsm = TemporarySoftHSM(directory / "softhsm")
        hsm.init_token(TOKEN, PIN)
    except ToolMissing as exc:
        pytest.skip(str(exc))
    s = Store(hsm, directory, ec.generate_private_key(ec.SECP256R1()),
              rsa.generate_private_key(public_exponent=65537, key_size=2048),
              directory / "import.jsonl")
    env, record = through_interposer(s, "import")
    run_driver(s, "import", interposer, {"token": TOKEN, "pin": PIN, "keys": s.key_args()}, env)
    assert record == s.import_record
    return s


@pytest.fixture(scope="module")
def compared(store: Store, interposer: Path) -> dict[str, Any]:
    """The compare scenario run directly and through the interposer."""
    args = {"token": TOKEN, "pin": PIN, "oaep_ciphertext": store.rsa_key.public_key().encrypt(
        OAEP_MESSAGE, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)).hex()}
    direct = run_driver(store, "compare", store.hsm.module, args).out
    env, record = through_interposer(store, "compare")
    interposed = run_driver(store, "compare", interposer, args, env).out
    return {"direct": direct, "interposed": interposed, "calls": load_calls(record)}


# ------------------------------------------------------------ forwarding


def test_same_results_and_return_codes_as_the_direct_module(compared: dict[str, Any]) -> None:
    direct, interposed = compared["direct"]["same"], compared["interposed"]["same"]
    assert interposed == direct
    # The comparison has substance: real outputs and real error codes.
    assert direct["oaep_decrypt"] == OAEP_MESSAGE.hex()
    assert direct["ec_value"] == {"error": "AttributeSensitive"}
    assert direct["no_such_key"] == {"error": "NoSuchKey"}
    assert direct["ecdsa_verifies"] and direct["pss_verifies"]
    assert direct["ecdsa_bad_sig_verifies"] is False


def test_buffer_size_queries_forwarded_exactly(compared: dict[str, Any]) -> None:
    same = compared["interposed"]["same"]
    ok, small = CKR["CKR_OK"], CKR["CKR_BUFFER_TOO_SMALL"]
    assert same["ecdsa_sizes"] == [
        {"rv": ok}, {"buf": None, "rv": ok, "len": 64},
        {"buf": 10, "rv": small, "len": 64}, {"buf": 64, "rv": ok, "len": 64},
    ]
    assert [(s.get("rv"), s.get("len")) for s in same["rsa_sizes"][1:]] == [
        (ok, 256), (small, 256), (ok, 256)]
    assert same["attr_null"] == {"rv": ok, "len": 10}
    assert same["attr_small"] == {"rv": small, "len": -1}
    assert same["attr_exact"] == {"rv": ok, "len": 10, "value": P256_PARAMS}
    assert same["attr_sensitive"] == {"rv": CKR["CKR_ATTRIBUTE_SENSITIVE"], "len": -1}
    assert same["signfinal_no_init"] == CKR["CKR_OPERATION_NOT_INITIALIZED"]
    assert same["sign_bad_session"] == CKR["CKR_SESSION_HANDLE_INVALID"]
    # ... and recorded as the buffer protocol they are.
    ecdsa_signs = [c for c in compared["calls"] if c.fn == "C_Sign" and c.in_len == 32
                   and c.out_len == 64]
    assert [(c.query, c.out_buf, c.rv) for c in ecdsa_signs[-3:]] == [
        (True, None, "CKR_OK"), (False, 10, "CKR_BUFFER_TOO_SMALL"), (False, 64, "CKR_OK")]


def test_signatures_through_the_interposer_verify_independently(
    store: Store, compared: dict[str, Any]
) -> None:
    data = bytes(range(32))
    for run in ("direct", "interposed"):
        raw = bytes.fromhex(compared[run]["ecdsa_sig"])
        der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                         int.from_bytes(raw[32:], "big"))
        store.ec_key.public_key().verify(der, data, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
        store.rsa_key.public_key().verify(bytes.fromhex(compared[run]["pss_sig"]), data, pss,
                                          utils.Prehashed(hashes.SHA256()))
    # Negative control: a changed signature does not verify.
    with pytest.raises(InvalidSignature):
        store.rsa_key.public_key().verify(bytes(256), data, pss, utils.Prehashed(hashes.SHA256()))


def test_every_function_forwarded_with_the_real_return_code(
    store: Store, interposer: Path
) -> None:
    direct = run_driver(store, "all-functions", store.hsm.module).out["rv"]
    env, record = through_interposer(store, "all-functions")
    interposed = run_driver(store, "all-functions", interposer, env=env).out["rv"]
    assert interposed == direct
    # Every function but C_GetFunctionList, and C_GetInfo once more before C_Initialize.
    assert len(direct) == len(SIGNATURES)
    assert set(direct.values()) - {CKR["CKR_OK"]}, "junk handles should draw errors"
    # Before C_Initialize nothing is forwarded or recorded; afterwards every
    # function of the 2.40 list is, once.
    assert direct["C_GetInfo (before C_Initialize)"] == CKR["CKR_CRYPTOKI_NOT_INITIALIZED"]
    names = [c.fn for c in load_calls(record)]
    assert sorted(names) == sorted(set(SIGNATURES) - {"C_GetFunctionList"})


# ------------------------------------------------------ PKCS#11 3.0 interface


def _interfaces_through(store: Store, interposer: Path, real: Path, name: str,
                        ) -> tuple[dict[str, Any], list[RecordedCall]]:
    """The interfaces scenario through the interposer over `real`: (result, record)."""
    record = store.directory / f"{name}.jsonl"
    env = write_interposer_config(real, record, store.directory / f"{name}.conf")
    out = run_driver(store, "interfaces", interposer, {"pin": PIN}, env).out
    return out, load_calls(record)


def _size_protocol_holds(out: dict[str, Any]) -> None:
    """C_GetInterfaceList's size query, too-small buffer and missing count."""
    assert (out["count_rv"], out["list_rv"]) == (CKR["CKR_OK"], CKR["CKR_OK"])
    assert out["count"] == len(out["interfaces"])
    assert (out["small_rv"], out["small_count"]) == (CKR["CKR_BUFFER_TOO_SMALL"], out["count"])
    assert out["no_count_rv"] == CKR_ARGUMENTS_BAD


def test_interface_of_a_2_40_module_wraps_the_2_40_list(store: Store, interposer: Path) -> None:
    """SoftHSM 2.6.1 has no C_GetInterface: the interposer offers its 2.40 list
    as the one "PKCS 11" interface, usable before and after C_Initialize."""
    assert run_driver(store, "interfaces", store.hsm.module).out == {"exported": False}
    out, calls = _interfaces_through(store, interposer, store.hsm.module, "if-softhsm")
    assert out["interfaces"] == [{"name": "PKCS 11", "version": [2, 40], "flags": 0}]
    _size_protocol_holds(out)
    pkcs11 = {"rv": CKR["CKR_OK"], "name": "PKCS 11", "version": [2, 40], "flags": 0}
    assert out["get"] == {
        "default": pkcs11, "pkcs11": pkcs11, "2.40": pkcs11,
        "unknown_name": {"rv": CKR_ARGUMENTS_BAD}, "unknown_version": {"rv": CKR_ARGUMENTS_BAD},
        "fork_safe": {"rv": CKR_ARGUMENTS_BAD}}
    assert out["get_no_out_rv"] == CKR_ARGUMENTS_BAD
    assert out["entries_unlike_c_getfunctionlist"] == []  # it is the C_GetFunctionList list
    # The list works, and is recorded: the real module was loaded by
    # C_GetInterfaceList, so even the call before C_Initialize reached it.
    assert out["rv"] == {"C_GetInfo (before C_Initialize)": CKR["CKR_CRYPTOKI_NOT_INITIALIZED"],
                         "C_Initialize": 0, "C_GetInfo": 0, "C_GetSlotList": 0, "C_Finalize": 0}
    assert out["slot_count"] >= 2  # the test token and SoftHSM's free slot
    assert out["library_manufacturer"] == "SoftHSM"
    assert [(c.fn, c.rv) for c in calls] == [
        ("C_GetInfo", "CKR_CRYPTOKI_NOT_INITIALIZED"), ("C_Initialize", "CKR_OK"),
        ("C_GetInfo", "CKR_OK"), ("C_GetSlotList", "CKR_OK"), ("C_Finalize", "CKR_OK")]
    assert _last(calls, "C_GetSlotList").out_len == out["slot_count"]


@pytest.mark.skipif(not OPENSC.is_file(), reason=f"Requires OpenSC's PKCS#11 module ({OPENSC})")
def test_interface_of_a_3_0_module_is_offered_and_recorded(
    store: Store, interposer: Path
) -> None:
    """OpenSC 0.23 offers "PKCS 11" 3.0 and 2.20: the interposer offers 3.0 (its
    own 3.0 list) and its 2.40 list, fails C_GetInterface requests as OpenSC
    does, and forwards and records the 3.0 functions with OpenSC's return codes."""
    direct = run_driver(store, "interfaces", OPENSC, {"pin": PIN}).out
    out, calls = _interfaces_through(store, interposer, OPENSC, "if-opensc")
    assert direct["exported"] and direct["count"] >= 1
    assert {"name": "PKCS 11", "version": [3, 0], "flags": 0} in direct["interfaces"]
    # The offer: "PKCS 11" 3.0 (OpenSC's flags), then the 2.40 list.
    opensc_3_0 = {k: v for k, v in direct["get"]["3.0"].items() if k != "rv"}
    assert out["interfaces"] == [opensc_3_0, {"name": "PKCS 11", "version": [2, 40], "flags": 0}]
    _size_protocol_holds(out)
    _size_protocol_holds(direct)
    assert out["get_no_out_rv"] == direct["get_no_out_rv"]
    for case in ("default", "pkcs11", "3.0", "unknown_name", "unknown_version", "fork_safe"):
        assert out["get"][case] == direct["get"][case], case
    assert out["get"]["unknown_name"]["rv"] != CKR["CKR_OK"]
    assert out["get"]["3.0"]["version"] == [3, 0]
    # What C_GetInterfaceList lists can be asked for by version (OpenSC's 2.x is 2.20).
    assert out["get"]["2.40"] == {"rv": CKR["CKR_OK"], "name": "PKCS 11", "version": [2, 40],
                                  "flags": 0}
    # Through the 3.0 list: the same answers as OpenSC's own 3.0 list.
    assert out["cryptoki_version"] == direct["cryptoki_version"] == [3, 0]
    assert out["rv"] == direct["rv"]
    assert out["rv"]["C_Initialize"] == out["rv"]["C_GetInfo"] == CKR["CKR_OK"]
    assert out["rv"]["C_SessionCancel"] == CKR["CKR_SESSION_HANDLE_INVALID"]
    assert out["rv"]["C_LoginUser"] != CKR["CKR_OK"]
    # Its 2.40 entries are the interposer's 2.40 wrappers; C_GetInfo is
    # answered per interface (as OpenSC's own lists differ there).
    assert out["entries_unlike_c_getfunctionlist"] == ["C_GetInfo"]
    assert direct["entries_unlike_c_getfunctionlist"] in ([], ["C_GetInfo"])
    # Recorded like the 2.40 functions: fn, rv, us, session; lengths, no PIN.
    login = _last(calls, "C_LoginUser")
    assert login.session == JUNK_SESSION and login.raw["user_type"] == "CKU_USER"
    assert (login.raw["pin_len"], login.raw["username_len"]) == (len(PIN), len("someone"))
    cancel = _last(calls, "C_SessionCancel")
    assert cancel.session == JUNK_SESSION and cancel.raw["flags"] == "0x0"
    for call in (login, cancel, _last(calls, "C_MessageSignFinal")):
        assert call.rv == _rv_name(out["rv"][call.fn]) and call.us >= 0, call.raw
    assert [c.fn for c in calls] == ["C_GetInfo", "C_Initialize", "C_GetInfo", "C_GetSlotList",
                                     "C_LoginUser", "C_SessionCancel", "C_MessageSignFinal",
                                     "C_Finalize"]
    assert _leaks((store.directory / "if-opensc.jsonl").read_bytes(), {"PIN": PIN.encode()}) == []


@pytest.mark.skipif(not SPY.is_file(), reason=f"Requires OpenSC's pkcs11-spy ({SPY})")
def test_interfaces_over_pkcs11_spy_of_a_2_40_module(store: Store, interposer: Path) -> None:
    """pkcs11-spy 0.23 over SoftHSM crashes in its own C_GetInterfaceList; the
    interposer asks the real module through C_GetInterface only, so it offers
    its 2.40 list here, as over SoftHSM alone."""
    record = store.directory / "if-spy.jsonl"
    env = {**write_interposer_config(SPY, record, store.directory / "if-spy.conf"),
           "PKCS11SPY": str(store.hsm.module),
           "PKCS11SPY_OUTPUT": str(store.directory / "if-spy.log")}
    out = run_driver(store, "interfaces", interposer, {"pin": PIN}, env).out
    assert out["interfaces"] == [{"name": "PKCS 11", "version": [2, 40], "flags": 0}]
    _size_protocol_holds(out)
    assert out["rv"]["C_Initialize"] == out["rv"]["C_GetSlotList"] == CKR["CKR_OK"]
    assert [c.fn for c in load_calls(record)][1:] == [
        "C_Initialize", "C_GetInfo", "C_GetSlotList", "C_Finalize"]


SPY_CALL = re.compile(r"^\d+: (C_\w+)$", re.MULTILINE)
# Not recorded by the interposer (it answers them itself; C_GetFunctionList
# below is how it loads the module).
NOT_RECORDED = {"C_GetFunctionList", "C_GetInterfaceList", "C_GetInterface"}


def _spy_functions(log: Path) -> list[str]:
    return [fn for fn in SPY_CALL.findall(log.read_text(errors="replace"))
            if fn not in NOT_RECORDED]


@pytest.mark.skipif(not SPY.is_file(), reason=f"Requires OpenSC's pkcs11-spy ({SPY})")
def test_pkcs11_spy_below_sees_exactly_the_calls_of_the_client(
    store: Store, interposer: Path
) -> None:
    """Transparency: pkcs11-spy below the interposer logs the calls the record
    shows, in the same order, and no others (the interposer learns the keys it
    describes from the client's own calls and asks the module nothing)."""
    args = {"token": TOKEN, "pin": PIN, "oaep_ciphertext": store.rsa_key.public_key().encrypt(
        OAEP_MESSAGE, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)).hex()}

    def run(name: str, extra: list[str]) -> tuple[list[RecordedCall], list[str]]:
        record, log = store.directory / f"{name}.jsonl", store.directory / f"{name}.log"
        env = {**write_interposer_config(SPY, record, store.directory / f"{name}.conf", extra),
               "PKCS11SPY": str(store.hsm.module), "PKCS11SPY_OUTPUT": str(log)}
        run_driver(store, "compare", interposer, args, env)
        return load_calls(record), _spy_functions(log)

    calls, below = run("spy-transparent", [])
    assert [c.fn for c in calls] == below
    assert below.count("C_SignInit") >= 4 and "C_GetAttributeValue" in below
    described = [c for c in calls if c.fn == "C_SignInit" and c.key]
    assert described and all(c.key["class"] == "CKO_PRIVATE_KEY" for c in described)
    # Control: the comparison sees a call the interposer makes of its own; an
    # emulated mechanism list is one (it asks the module for the real list).
    calls, below = run("spy-emulated", ["hide 0x210 # CKM_MD5"])
    assert [c.fn for c in calls] != below
    assert below.count("C_GetMechanismList") > [c.fn for c in calls].count("C_GetMechanismList")


def test_interfaces_before_a_configuration_that_cannot_load(
    store: Store, interposer: Path, tmp_path: Path
) -> None:
    """C_GetInterfaceList with a bad configuration still answers (the 2.40 list),
    quietly; C_Initialize then fails and says why, as it does without it."""
    (tmp_path / "conf").write_text(f"module /nonexistent/libreal.so\nrecord {tmp_path / 'r'}\n")
    run = run_driver(store, "interfaces", interposer, {"pin": PIN},
                     {CONF_ENV: str(tmp_path / "conf")})
    assert run.out["interfaces"] == [{"name": "PKCS 11", "version": [2, 40], "flags": 0}]
    assert run.out["rv"]["C_GetInfo (before C_Initialize)"] == (
        CKR["CKR_CRYPTOKI_NOT_INITIALIZED"])
    assert run.out["rv"]["C_Initialize"] == CKR["CKR_GENERAL_ERROR"]
    # Reported once, by C_Initialize, not by the C_GetInterface(List) calls before.
    assert run.stderr.count("cannot load real module /nonexistent/libreal.so") == 1
    assert run.stderr.startswith("p11tls interposer: ")


def _rv_name(rv: int) -> str:
    return next((name for name, value in CKR.items() if value == rv), f"0x{rv:x}")


# ------------------------------------------------------------- the record


def _last(calls: list[RecordedCall], fn: str, **match: Any) -> RecordedCall:
    found = [c for c in calls if c.fn == fn and all(c.raw.get(k) == v for k, v in match.items())]
    assert found, f"no {fn} with {match}"
    return found[-1]


def test_record_describes_mechanism_params_and_key(compared: dict[str, Any]) -> None:
    calls: list[RecordedCall] = compared["calls"]
    ecdsa = _last(calls, "C_SignInit", mechanism={"name": "CKM_ECDSA", "value": 4161},
                  rv="CKR_OK")
    assert ecdsa.params is None
    assert ecdsa.key == {"class": "CKO_PRIVATE_KEY", "key_type": "CKK_EC", "id": "01",
                         "label": "ec", "ec_params": P256_PARAMS}
    pss = _last(calls, "C_SignInit", mechanism={"name": "CKM_RSA_PKCS_PSS", "value": 0xD})
    assert pss.params == {"hash": "CKM_SHA256", "mgf": "CKG_MGF1_SHA256", "salt_len": 32}
    # What the client itself learned: the driver found the RSA key by class and
    # label and read its key type, never its CKA_ID, so the record knows no id.
    assert pss.key == {"class": "CKO_PRIVATE_KEY", "key_type": "CKK_RSA", "id": None,
                       "label": "rsa"}  # no curve for RSA
    oaep = _last(calls, "C_DecryptInit")
    assert oaep.params == {"hash": "CKM_SHA_1", "mgf": "CKG_MGF1_SHA1",
                           "source": "CKZ_DATA_SPECIFIED", "label_len": 0}
    login = _last(calls, "C_Login")
    assert (login.raw["user_type"], login.raw["pin_len"]) == ("CKU_USER", len(PIN))
    for call in calls:
        assert {"fn", "pid", "tid", "seq", "rv", "us"} <= call.raw.keys()
        assert call.rv.startswith("CKR_"), call.raw


def test_sign_summary_single_and_multi_part(compared: dict[str, Any]) -> None:
    calls: list[RecordedCall] = compared["calls"]
    # The last signing in the run: CKM_RSA_PKCS over a SHA-256 DigestInfo, with
    # a size query and a too-small buffer before the real call.
    assert sign_summary(calls) == {"mechanism": "CKM_RSA_PKCS", "params": None, "parts": 0,
                                   "input_bytes": 51, "rv": "CKR_OK"}
    # The multi-part CKM_SHA256_RSA_PKCS: three C_SignUpdate calls, 10+22+4 bytes.
    inits = [i for i, c in enumerate(calls) if c.fn == "C_SignInit"
             and c.mechanism == "CKM_SHA256_RSA_PKCS"]
    end = next(i for i in range(inits[1] + 1, len(calls)) if calls[i].fn == "C_SignInit")
    after_multipart = calls[:end]
    assert sign_summary(after_multipart) == {
        "mechanism": "CKM_SHA256_RSA_PKCS", "params": None, "parts": 3, "input_bytes": 36,
        "rv": "CKR_OK"}
    # The same from the plain JSON objects that HandshakeRecord.calls keeps.
    assert sign_summary([c.to_json() for c in after_multipart]) == sign_summary(after_multipart)
    # Negative controls: no C_SignInit at all; a C_SignInit that failed.
    assert sign_summary([c for c in calls if c.fn != "C_SignInit"]) is None
    failed = _last(calls, "C_SignInit", key_handle=0xDEAD)
    assert failed.rv == "CKR_OBJECT_HANDLE_INVALID" and failed.key is None
    assert sign_summary(calls[: calls.index(failed) + 1]) == {
        "mechanism": "CKM_ECDSA", "params": None, "parts": 0, "input_bytes": None,
        "rv": "CKR_OBJECT_HANDLE_INVALID"}


def test_calls_table(compared: dict[str, Any]) -> None:
    table = format_calls_table(compared["calls"])
    assert "C_SignInit" in table and "CKM_RSA_PKCS_PSS(SHA256,mgf=MGF1_SHA256,salt=32)" in table
    assert "size? 64" in table and "CKR_BUFFER_TOO_SMALL" in table
    assert table.splitlines()[-1] == "signing: CKM_RSA_PKCS, 51 bytes, single-part, CKR_OK"
    empty = format_calls_table([])
    assert "0 calls" in empty and "signing:" not in empty


def test_load_calls_refuses_other_files(tmp_path: Path, compared: dict[str, Any]) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(dict(c.raw)) for c in compared["calls"]) + "\n")
    assert load_calls(good) == compared["calls"]
    for name, text in (("results.json", '[{"case_id": "x"}]\n'), ("log.txt", "hello\n"),
                       ("other.jsonl", '{"fn": "C_Sign"}\n')):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError, match="is not an interposer record file: line 1"):
            load_calls(path)
    with pytest.raises(ConfigError, match="cannot read record file"):
        load_calls(tmp_path / "missing.jsonl")


# ------------------------------------------------------------ no secrets


def _leaks(data: bytes, secrets_: dict[str, bytes]) -> list[str]:
    """Names of the secrets found in `data`: raw, or as hex in any case, packed or
    spaced like a hex dump, whole or in 16-byte pieces."""
    lowered = data.lower()
    found = []
    for name, value in secrets_.items():
        pieces = [value] + [value[i:i + 16] for i in range(0, len(value) - 15, 16)]
        hexes = [h for p in pieces for h in (p.hex(), p.hex(" "))]
        if value in data or any(h.encode() in lowered for h in hexes):
            found.append(name)
    return found


def test_no_pin_and_no_private_key_bytes_in_the_record(store: Store) -> None:
    data = store.import_record.read_bytes()
    secret = {"PIN": PIN.encode(), **store.secret_values}
    assert _leaks(data, secret) == []
    # Positive side: the record did see those calls, with types and lengths.
    calls = load_calls(store.import_record)
    assert _last(calls, "C_Login").raw["pin_len"] == len(PIN)
    templates = [c.raw["template"] for c in calls if c.fn == "C_CreateObject"]
    attrs = {a["type"]: a for t in templates for a in t}
    assert attrs["CKA_VALUE"] == {"type": "CKA_VALUE", "len": 32}
    # d is 255 bytes about one time in 256: compare with this run's key.
    assert attrs["CKA_PRIVATE_EXPONENT"] == {"type": "CKA_PRIVATE_EXPONENT",
                                             "len": len(store.secret_values["rsa d"])}
    assert attrs["CKA_PRIME_1"]["len"] == 128 and "value" not in attrs["CKA_PRIME_1"]
    assert "value" not in attrs["CKA_MODULUS"]  # public, but not on the allow-list
    assert {(a["type"], a.get("value")) for t in templates for a in t} >= {
        ("CKA_ID", "01"), ("CKA_LABEL", "ec"), ("CKA_EC_PARAMS", P256_PARAMS),
        ("CKA_CLASS", "CKO_PRIVATE_KEY"), ("CKA_KEY_TYPE", "CKK_RSA"), ("CKA_SENSITIVE", True)}
    # Negative control for the search itself.
    assert _leaks(data + PIN.encode(), secret) == ["PIN"]
    assert _leaks(data + store.secret_values["rsa q"].hex().encode(), secret) == ["rsa q"]


@pytest.mark.skipif(not SPY.is_file(), reason=f"Requires OpenSC's pkcs11-spy ({SPY})")
def test_the_leak_search_finds_what_pkcs11_spy_logs(store: Store) -> None:
    """Negative control with a real logger that does write secrets: the same
    import through pkcs11-spy shows the PIN and the key bytes in its log."""
    store.hsm.init_token("spy-control", PIN)
    log = store.directory / "spy.log"
    env = {"PKCS11SPY": str(store.hsm.module), "PKCS11SPY_OUTPUT": str(log)}
    run_driver(store, "import", SPY, {"token": "spy-control", "pin": PIN,
                                      "keys": store.key_args()}, env)
    leaks = _leaks(log.read_bytes(), {"PIN": PIN.encode(), **store.secret_values})
    assert set(leaks) == {"PIN", *store.secret_values}


# ----------------------------------------------------------- concurrency


def _record_problems(lines: list[bytes]) -> list[str]:
    """What is wrong with a record written by one process: torn, lost or repeated lines."""
    problems, seqs = [], []
    for number, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
            seqs.append(obj["seq"])
        except (ValueError, KeyError):
            problems.append(f"line {number} is not a whole record: {line[:60]!r}")
    if len(set(seqs)) != len(seqs):
        problems.append("repeated seq")
    if seqs and sorted(seqs) != list(range(1, max(seqs) + 1)):
        problems.append("seq has gaps: lines lost")
    return problems


def test_threads_signing_at_once_keep_every_line_whole(store: Store, interposer: Path) -> None:
    threads, signatures = 8, 100
    env, record = through_interposer(store, "threads")
    out = run_driver(store, "threads", interposer,
                     {"token": TOKEN, "pin": PIN, "threads": threads,
                      "signatures": signatures}, env).out
    assert out == {"nonzero_rvs": [], "calls": threads * signatures * 2}
    lines = record.read_bytes().splitlines(keepends=True)
    assert all(line.endswith(b"\n") for line in lines)
    assert _record_problems(lines) == []
    calls = load_calls(record)
    signs = [c for c in calls if c.fn == "C_Sign"]
    assert len(signs) == threads * signatures and {c.rv for c in signs} == {"CKR_OK"}
    assert len({c.tid for c in signs}) == threads
    assert len({c.session for c in signs}) == threads
    # Negative control: the checks above notice a torn and a repeated line.
    torn = [*lines[:5], lines[5][:20], lines[5][20:], *lines[6:]]
    repeated = [*lines, lines[7]]
    assert any("not a whole record" in p for p in _record_problems(torn))
    assert "repeated seq" in _record_problems(repeated)
    assert "seq has gaps: lines lost" in _record_problems(lines[:3] + lines[4:])


# --------------------------------------------------------- configuration


@pytest.mark.parametrize("case", ["good", "missing-module", "unknown-key", "no-record-line",
                                  "record-unwritable", "module-is-interposer", "no-env"])
def test_bad_configuration_fails_cleanly_in_c_initialize(
    store: Store, interposer: Path, tmp_path: Path, case: str
) -> None:
    module, record = f"module {store.hsm.module}", f"record {tmp_path / 'r.jsonl'}"
    lines, expected = {
        "good": ([module, record], ""),
        "missing-module": (["module /nonexistent/libreal.so", record],
                           "cannot load real module /nonexistent/libreal.so"),
        "unknown-key": ([module, record, "hidden CKM_ECDSA"],
                        "line 3: unknown key (known: module, record, hide, "),
        "no-record-line": (["# only a module", module], "missing line: record PATH"),
        "record-unwritable": ([module, "record /nonexistent/dir/r.jsonl"],
                              "cannot open record file /nonexistent/dir/r.jsonl"),
        "module-is-interposer": ([f"module {interposer}", record], "it is this interposer"),
        "no-env": (None, f"{CONF_ENV} is not set"),
    }[case]
    env = {}
    if lines is not None:
        (tmp_path / "conf").write_text("\n".join(lines) + "\n")
        env = {CONF_ENV: str(tmp_path / "conf")}
    run = run_driver(store, "initialize", interposer, env=env)
    if case == "good":
        assert run.out == {"rv": CKR["CKR_OK"]} and run.stderr == ""
        assert [c.fn for c in load_calls(tmp_path / "r.jsonl")] == ["C_Initialize", "C_Finalize"]
    else:
        assert run.out == {"rv": CKR["CKR_GENERAL_ERROR"]}
        assert expected in run.stderr and run.stderr.startswith("p11tls interposer: ")


def test_write_interposer_config(tmp_path: Path) -> None:
    real = tmp_path / "libreal.so"
    real.write_bytes(b"")
    env = write_interposer_config(real, tmp_path / "out" / "r.jsonl", tmp_path / "c.conf",
                                  ["sign_max_input 2048"])
    assert env == {CONF_ENV: str(tmp_path / "c.conf")}
    lines = (tmp_path / "c.conf").read_text().splitlines()
    assert lines[1:] == [f"module {real}", f"record {tmp_path / 'out' / 'r.jsonl'}",
                         "sign_max_input 2048"]
    assert (tmp_path / "out").is_dir()
    with pytest.raises(ConfigError, match="does not exist"):
        write_interposer_config(tmp_path / "nope.so", tmp_path / "r", tmp_path / "c2")
    for bad in ("hide\nmodule /evil.so", "record /other", "Bad-Key x", "lonely"):
        with pytest.raises(ConfigError, match="interposer setting"):
            write_interposer_config(real, tmp_path / "r", tmp_path / "c3", [bad])


# --------------------------------------------------------------- builder


def test_build_reuses_and_rebuilds_when_the_source_changes(tmp_path: Path) -> None:
    source = tmp_path / "interposer.c"
    shutil.copy(INTERPOSER_SOURCE, source)
    cache = tmp_path / "cache"
    first = build_interposer(source, cache)
    mtime = first.stat().st_mtime_ns
    assert build_interposer(source, cache) == first and first.stat().st_mtime_ns == mtime
    source.write_text(source.read_text() + "/* changed */\n")
    second = build_interposer(source, cache)
    assert second != first and second.is_file() and first.is_file()
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, second.name])


def test_parallel_builds_share_one_result(tmp_path: Path) -> None:
    source = tmp_path / "interposer.c"
    shutil.copy(INTERPOSER_SOURCE, source)
    cache = tmp_path / "cache"
    results: list[Path | HarnessError] = []

    def build() -> None:
        try:
            results.append(build_interposer(source, cache))
        except HarnessError as exc:  # shown by the assertion below
            results.append(exc)

    workers = [threading.Thread(target=build) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(set(results)) == 1 and isinstance(results[0], Path), results
    assert [p.name for p in cache.iterdir()] == [results[0].name]  # no temp files left


def test_clear_error_without_a_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "interposer.c"
    shutil.copy(INTERPOSER_SOURCE, source)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(ToolMissing, match="'/nonexistent/cc' not found.*install gcc and "
                                          "libp11-kit-dev") as info:
        build_interposer(source, tmp_path / "cache")
    assert "\n" not in str(info.value)
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissing, match="'cc' not found"):
        build_interposer(source, tmp_path / "cache")
    # Control: with the compiler back it builds, and a built module needs no compiler.
    monkeypatch.undo()
    built = build_interposer(source, tmp_path / "cache")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert build_interposer(source, tmp_path / "cache") == built


def test_clear_error_without_pkcs11_header(tmp_path: Path) -> None:
    with pytest.raises(ToolMissing, match=r"pkcs11\.h from p11-kit not found.*libp11-kit-dev"):
        _find_pkcs11_include([tmp_path])
    assert (_find_pkcs11_include() / "p11-kit" / "pkcs11.h").is_file()


def test_source_compiles_without_warnings(tmp_path: Path) -> None:
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        pytest.skip(f"Requires a C compiler ({cc})")
    write_names_header(tmp_path)
    argv = [cc, "-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-I{tmp_path}",
            f"-I{_find_pkcs11_include()}"]
    proc = subprocess.run([*argv, str(INTERPOSER_SOURCE)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    # Control: the same command does fail on a warning.
    warned = tmp_path / "warned.c"
    warned.write_text(INTERPOSER_SOURCE.read_text() + "\nvoid probe(void) { int unused_thing; }\n")
    proc = subprocess.run([*argv, str(warned)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0 and "unused_thing" in proc.stderr
