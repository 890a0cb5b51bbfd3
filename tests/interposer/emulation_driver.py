"""Child-process driver for tests/interposer/test_emulation.py.

    python emulation_driver.py SCENARIO MODULE JSON-ARGS

Like interposer_driver.py (whose ctypes binding it reuses): one process loads
one module path once, so every scenario runs in its own process. MODULE is the
interposer (P11TLS_INTERPOSER_CONF set, with or without a profile's lines) or
SoftHSM itself. The ctypes binding gives the exact return codes and the
buffer protocol (size queries, too-small buffers) that python-pkcs11 hides.
Data to sign is `data(n, seed)`, so the test can recompute it to verify.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import time
from typing import Any

from interposer_driver import CK_ULONG, CKF_SERIAL_SESSION, CKU_USER, Mechanism, RawModule

CKF_RW_SESSION = 0x2
CKA_CLASS, CKA_LABEL = 0x0, 0x3
CKO_PRIVATE_KEY = 3
TOKEN_FLAGS_OFFSET = 96  # CK_TOKEN_INFO: label[32] manufacturerID[32] model[16] serial[16]
SESSION_STATE_OFFSET = ctypes.sizeof(CK_ULONG)  # CK_SESSION_INFO: slotID, state, ...

MECHANISMS = {
    "CKM_RSA_PKCS": 0x1, "CKM_RSA_X_509": 0x3, "CKM_RSA_PKCS_PSS": 0xD,
    "CKM_SHA256_RSA_PKCS": 0x40, "CKM_SHA256_RSA_PKCS_PSS": 0x43, "CKM_ECDSA": 0x1041,
    "CKM_ECDSA_SHA1": 0x1042, "CKM_ECDSA_SHA256": 0x1044, "CKM_ECDSA_SHA384": 0x1045,
}
NAMES = {value: name for name, value in MECHANISMS.items()}
CKM_SHA256, CKG_MGF1_SHA256 = 0x250, 0x2


class PssParams(ctypes.Structure):
    _fields_ = [("hashAlg", CK_ULONG), ("mgf", CK_ULONG), ("sLen", CK_ULONG)]


PSS_SHA256 = PssParams(CKM_SHA256, CKG_MGF1_SHA256, 32)


def mechanism(name: str) -> Mechanism:
    """The mechanism, with SHA-256/MGF1-SHA256/32 parameters for the PSS ones."""
    if "PSS" in name:
        return Mechanism(MECHANISMS[name], ctypes.cast(ctypes.byref(PSS_SHA256), ctypes.c_void_p),
                         ctypes.sizeof(PSS_SHA256))
    return Mechanism(MECHANISMS[name], None, 0)


def data(n: int, seed: int = 0) -> bytes:
    """Deterministic test input; test_emulation.py has the same function."""
    return bytes((i * 7 + seed) % 256 for i in range(n))


class Token:
    """One logged-in (or not) session on the token named `label`."""

    def __init__(self, module: str, label: str, pin: str | None, rw: bool = False) -> None:
        self.raw = RawModule(module)
        assert self.raw.initialize() == 0
        self.slot = self.raw.slot_of(label)
        handle = CK_ULONG(0)
        flags = CKF_SERIAL_SESSION | (CKF_RW_SESSION if rw else 0)
        assert self.raw.C_OpenSession(self.slot, flags, None, None, ctypes.byref(handle)) == 0
        self.session = handle.value
        if pin is not None:
            assert self.login(pin) == 0

    def login(self, pin: str) -> int:
        text = pin.encode()
        return int(self.raw.C_Login(self.session, CKU_USER, text, len(text)))

    def key(self, label: str) -> int:
        return self.raw.find_private_key(self.session, label)

    def count_private_keys(self, label: str) -> int:
        cls = CK_ULONG(CKO_PRIVATE_KEY)
        text = label.encode()
        from interposer_driver import Attribute

        template = (Attribute * 2)(
            Attribute(CKA_CLASS, ctypes.cast(ctypes.byref(cls), ctypes.c_void_p),
                      ctypes.sizeof(cls)),
            Attribute(CKA_LABEL, ctypes.cast(ctypes.c_char_p(text), ctypes.c_void_p), len(text)),
        )
        assert self.raw.C_FindObjectsInit(self.session, template, 2) == 0
        handles, found = (CK_ULONG * 16)(), CK_ULONG(0)
        assert self.raw.C_FindObjects(self.session, handles, 16, ctypes.byref(found)) == 0
        assert self.raw.C_FindObjectsFinal(self.session) == 0
        return found.value

    def token_flags(self) -> int:
        info = ctypes.create_string_buffer(512)
        assert self.raw.C_GetTokenInfo(self.slot, info) == 0
        return CK_ULONG.from_buffer(info, TOKEN_FLAGS_OFFSET).value

    def session_state(self) -> int:
        info = ctypes.create_string_buffer(64)
        assert self.raw.C_GetSessionInfo(self.session, info) == 0
        return CK_ULONG.from_buffer(info, SESSION_STATE_OFFSET).value

    def close(self) -> None:
        self.raw.C_CloseSession(self.session)
        self.raw.C_Finalize(None)


def mechanisms(raw: RawModule, slot: int) -> dict[str, Any]:
    """The mechanism list through the whole buffer protocol."""
    count = CK_ULONG(0)
    query_rv = raw.C_GetMechanismList(slot, None, ctypes.byref(count))
    small = CK_ULONG(1)
    one = (CK_ULONG * 1)()
    small_rv = raw.C_GetMechanismList(slot, one, ctypes.byref(small))
    full = (CK_ULONG * count.value)()
    filled = CK_ULONG(count.value)
    full_rv = raw.C_GetMechanismList(slot, full, ctypes.byref(filled))
    return {"query": [query_rv, count.value], "small": [small_rv, small.value],
            "full": [full_rv, filled.value],
            "names": sorted(NAMES.get(m, hex(m)) for m in full[: filled.value])}


def mechanism_info(raw: RawModule, slot: int, name: str) -> dict[str, Any]:
    info = (CK_ULONG * 3)()  # ulMinKeySize, ulMaxKeySize, flags
    rv = raw.C_GetMechanismInfo(slot, MECHANISMS[name], info)
    return {"rv": rv, "min": info[0], "max": info[1], "flags": info[2]} if rv == 0 else {"rv": rv}


def sign_op(t: Token, op: dict[str, Any]) -> dict[str, Any]:
    """One signing operation: C_SignInit, then C_Sign (parts None) or one
    C_SignUpdate per part and C_SignFinal, with optional size queries first
    ("query") and a too-small buffer ("small") before the real call."""
    raw, s = t.raw, t.session
    mech = mechanism(op["mech"])
    parts = op.get("parts")
    message = data(op["len"] if parts is None else sum(parts), op.get("seed", 0))
    result: dict[str, Any] = {"init": raw.C_SignInit(s, ctypes.byref(mech), t.key(op["key"])),
                              "calls": [], "sig": None}
    if result["init"] != 0:
        return result
    calls = result["calls"]
    start = time.perf_counter()
    if parts is not None:
        offset = 0
        for part in parts:
            rv = raw.C_SignUpdate(s, message[offset:offset + part], part)
            offset += part
            calls.append(["C_SignUpdate", rv])
            if rv != 0:
                result["seconds"] = time.perf_counter() - start
                return result

    def final(buf: Any, length: CK_ULONG) -> int:
        if parts is None:
            return int(raw.C_Sign(s, message, len(message), buf, ctypes.byref(length)))
        return int(raw.C_SignFinal(s, buf, ctypes.byref(length)))

    fn = "C_Sign" if parts is None else "C_SignFinal"
    size = 512
    if op.get("query"):
        length = CK_ULONG(0)
        rv = final(None, length)
        calls.append([fn + " (size query)", rv, length.value])
        if rv != 0:
            result["seconds"] = time.perf_counter() - start
            return result
        size = length.value
    if op.get("small"):
        length = CK_ULONG(1)
        rv = final(ctypes.create_string_buffer(1), length)
        calls.append([fn + " (1-byte buffer)", rv, length.value])
    buf, length = ctypes.create_string_buffer(size), CK_ULONG(size)
    rv = final(buf, length)
    result["seconds"] = time.perf_counter() - start
    calls.append([fn, rv, length.value])
    if rv == 0:
        result["sig"] = buf.raw[: length.value].hex()
    return result


def verify_op(t: Token, op: dict[str, Any]) -> dict[str, Any]:
    """C_VerifyInit with the public key, then C_Verify or C_VerifyUpdate/Final."""
    from interposer_driver import Attribute

    raw, s = t.raw, t.session
    cls = CK_ULONG(2)  # CKO_PUBLIC_KEY
    text = op["key"].encode()
    template = (Attribute * 2)(
        Attribute(CKA_CLASS, ctypes.cast(ctypes.byref(cls), ctypes.c_void_p), ctypes.sizeof(cls)),
        Attribute(CKA_LABEL, ctypes.cast(ctypes.c_char_p(text), ctypes.c_void_p), len(text)),
    )
    assert raw.C_FindObjectsInit(s, template, 2) == 0
    key, found = CK_ULONG(0), CK_ULONG(0)
    assert raw.C_FindObjects(s, ctypes.byref(key), 1, ctypes.byref(found)) == 0
    assert raw.C_FindObjectsFinal(s) == 0 and found.value == 1
    mech = Mechanism(MECHANISMS[op["mech"]], None, 0)
    message = data(op["len"], op.get("seed", 0))
    sig = bytes.fromhex(op["sig"])
    init = raw.C_VerifyInit(s, ctypes.byref(mech), key.value)
    if init != 0:
        return {"init": init}
    if not op.get("multipart"):
        return {"init": init, "rv": raw.C_Verify(s, message, len(message), sig, len(sig))}
    half = len(message) // 2
    update = [raw.C_VerifyUpdate(s, message[:half], half),
              raw.C_VerifyUpdate(s, message[half:], len(message) - half)]
    return {"init": init, "update": update, "rv": raw.C_VerifyFinal(s, sig, len(sig))}


# --------------------------------------------------------------- scenarios


def scenario_mechanisms(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """What the token offers, and whether C_SignInit takes each mechanism."""
    t = Token(module, args["token"], args["pin"])
    out = {"list": mechanisms(t.raw, t.slot),
           "info": {name: mechanism_info(t.raw, t.slot, name) for name in args["info"]},
           "init": {}}
    for name, key, length in args["init"]:
        result = sign_op(t, {"mech": name, "key": key, "len": length})
        out["init"][name] = [result["init"], result["calls"][-1][1] if result["calls"] else None]
    t.close()
    return out


def scenario_sign(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """A sequence of signing (and verifying) operations in one session."""
    t = Token(module, args["token"], args["pin"])
    results: list[dict[str, Any]] = []
    for op in args["ops"]:
        if "sig_of" in op:  # verify what an earlier operation signed
            op = {**op, "sig": results[op["sig_of"]]["sig"]}
        results.append(verify_op(t, op) if op.get("verify") else sign_op(t, op))
    t.close()
    return {"results": results}


def scenario_pin(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """C_Login with wrong and right PINs; token flags and session state between."""
    t = Token(module, args["token"], None)
    steps: list[Any] = []
    for step in args["steps"]:
        if step == "wrong":
            steps.append(["wrong", t.login("not-the-pin")])
        elif step == "right":
            steps.append(["right", t.login(args["pin"])])
        elif step == "logout":
            steps.append(["logout", t.raw.C_Logout(t.session)])
        elif step == "flags":
            steps.append(["flags", t.token_flags()])
        elif step == "state":
            steps.append(["state", t.session_state()])
    t.close()
    return {"steps": steps}


def scenario_create(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """Import (C_CreateObject) and generation on the token via python-pkcs11."""
    import pkcs11
    from pkcs11 import Attribute as A
    from pkcs11 import KeyType, ObjectClass
    from pkcs11.util.ec import encode_named_curve_parameters

    lib = pkcs11.lib(module)
    token = lib.get_token(token_label=args["token"])
    out: dict[str, Any] = {}
    with token.open(rw=True, user_pin=args["pin"]) as session:
        for key in args["imports"]:
            template: dict[Any, Any] = {A.CLASS: ObjectClass.PRIVATE_KEY, A.TOKEN: True,
                                        A.LABEL: key["label"], A.PRIVATE: True,
                                        A.SENSITIVE: True, A.SIGN: True}
            if key["type"] == "ec":
                template.update({A.KEY_TYPE: KeyType.EC,
                                 A.EC_PARAMS: bytes.fromhex(key["ec_params"]),
                                 A.VALUE: bytes.fromhex(key["d"])})
            else:
                template.update({A.KEY_TYPE: KeyType.RSA})
                for attr, name in ((A.MODULUS, "n"), (A.PUBLIC_EXPONENT, "e"),
                                   (A.PRIVATE_EXPONENT, "d"), (A.PRIME_1, "p"),
                                   (A.PRIME_2, "q"), (A.EXPONENT_1, "dmp1"),
                                   (A.EXPONENT_2, "dmq1"), (A.COEFFICIENT, "iqmp")):
                    template[attr] = bytes.fromhex(key[name])
            try:
                session.create_object(template)
                out[key["label"]] = "created"
            except pkcs11.PKCS11Error as exc:
                out[key["label"]] = type(exc).__name__
        params = session.create_domain_parameters(
            KeyType.EC, {A.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
        try:
            params.generate_keypair(store=True, label=args["generated_label"])
            out[args["generated_label"]] = "created"
        except pkcs11.PKCS11Error as exc:
            out[args["generated_label"]] = type(exc).__name__
        s: Any = session
        labels = [key["label"] for key in args["imports"]] + [args["generated_label"]]
        out["found"] = {label: len(list(s.get_objects({A.LABEL: label,
                                                       A.CLASS: ObjectClass.PRIVATE_KEY})))
                        for label in labels}
    return out


def scenario_threads(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """Several threads, each in its own session, signing multi-part with an
    emulated combined mechanism at once (the interposer keeps per-session state)."""
    raw = RawModule(module)
    sessions, key = raw.threaded_sessions(args["token"], args["pin"], args["threads"], "ec")
    barrier = threading.Barrier(len(sessions))
    signatures: dict[int, list[str]] = {}
    errors: list[int] = []

    def work(index: int, session: int) -> None:
        mech = Mechanism(MECHANISMS["CKM_ECDSA_SHA256"], None, 0)
        message = data(300, index)
        sig = ctypes.create_string_buffer(64)
        mine = []
        barrier.wait()
        for _ in range(args["signatures"]):
            rvs = [raw.C_SignInit(session, ctypes.byref(mech), key),
                   raw.C_SignUpdate(session, message[:100], 100),
                   raw.C_SignUpdate(session, message[100:], 200)]
            length = CK_ULONG(64)
            rvs.append(raw.C_SignFinal(session, sig, ctypes.byref(length)))
            errors.extend(rv for rv in rvs if rv != 0)
            mine.append(sig.raw[: length.value].hex())
        signatures[index] = mine

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for s in sessions:
        raw.C_CloseSession(s)
    raw.C_Finalize(None)
    return {"errors": sorted(set(errors)), "signatures": {str(k): v for k, v in signatures.items()}}


def scenario_session_state(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """A multi-part signing with an emulated combined mechanism in a session on
    token A; between its C_SignUpdate calls something else happens: "close_all"
    (C_CloseAllSessions of the slot of args["close"]) or "finalize" (C_Finalize),
    either directly ("during": false) or from another thread while the first
    C_SignUpdate is inside the interposer (it has a latency, "during": true)."""
    raw = RawModule(module)
    sessions, key = raw.threaded_sessions(args["token"], args["pin"], 1, "ec")
    session = sessions[0]
    other = CK_ULONG(0)  # a session on token B, so that slot has one too
    slot_b = raw.slot_of(args["token_b"])
    assert raw.C_OpenSession(slot_b, CKF_SERIAL_SESSION, None, None, ctypes.byref(other)) == 0
    slots = {"a": raw.slot_of(args["token"]), "b": slot_b}
    mech = Mechanism(MECHANISMS["CKM_ECDSA_SHA256"], None, 0)
    message = data(300, 9)
    rvs: dict[str, int] = {"init": raw.C_SignInit(session, ctypes.byref(mech), key)}

    def intervene() -> None:
        if args["what"] == "finalize":
            rvs["finalize"] = raw.C_Finalize(None)
        else:
            rvs["close_all"] = raw.C_CloseAllSessions(slots[args["close"]])

    if args["during"]:
        other_thread = threading.Timer(args["delay_s"], intervene)
        other_thread.start()
        rvs["update1"] = raw.C_SignUpdate(session, message[:100], 100)
        other_thread.join()
    else:
        rvs["update1"] = raw.C_SignUpdate(session, message[:100], 100)
        intervene()
    rvs["update2"] = raw.C_SignUpdate(session, message[100:], 200)
    sig, length = ctypes.create_string_buffer(64), CK_ULONG(64)
    rvs["final"] = raw.C_SignFinal(session, sig, ctypes.byref(length))
    out: dict[str, Any] = {"rv": rvs}
    if rvs["final"] == 0:
        out["sig"] = sig.raw[: length.value].hex()
    if "finalize" not in rvs:
        raw.C_Finalize(None)
    return out


SCENARIOS = {"mechanisms": scenario_mechanisms, "sign": scenario_sign, "pin": scenario_pin,
             "create": scenario_create, "threads": scenario_threads,
             "session_state": scenario_session_state}

if __name__ == "__main__":
    name, module_path = sys.argv[1], sys.argv[2]
    print(json.dumps(SCENARIOS[name](module_path, json.loads(sys.argv[3]))))
