"""Child-process driver for tests/interposer/test_interposer.py.

A process may load a PKCS#11 module path only once (SoftHSM refuses a second
C_Initialize), and the pytest process keeps SoftHSM for the TLS matrix; so every
scenario that loads a module runs here, in its own process:

    python interposer_driver.py SCENARIO MODULE [JSON-ARGS]

MODULE is the real module or the interposer (then P11TLS_INTERPOSER_CONF is
set); SOFTHSM2_CONF points at the test's store. The result is one JSON object
on stdout. python-pkcs11 drives the ordinary calls; a small ctypes binding does
what python-pkcs11 hides (NULL-buffer size queries, too-small buffers, exact
return codes, CKF_OS_LOCKING_OK).
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
from collections.abc import Callable
from typing import Any

CK_ULONG = ctypes.c_ulong
UNAVAILABLE = CK_ULONG(-1).value
CKF_OS_LOCKING_OK = 0x2
CKF_SERIAL_SESSION = 0x4
CKF_DONT_BLOCK = 0x1
CKU_USER = 1
CKA_CLASS, CKA_LABEL, CKA_VALUE, CKA_EC_PARAMS = 0x0, 0x3, 0x11, 0x180
CKO_PRIVATE_KEY = 3
CKM_RSA_PKCS, CKM_ECDSA, CKM_RSA_PKCS_OAEP = 0x1, 0x1041, 0x9
JUNK = 0xDEAD  # a session/object/slot handle no module hands out this early

# Argument kinds: h handle (JUNK), z zero, f flags, b CK_BBOOL, p pointer, n NULL.
# In CK_FUNCTION_LIST order (PKCS#11 2.40); C_GetFunctionList is not called.
SIGNATURES: dict[str, str] = {
    "C_Initialize": "n", "C_Finalize": "n", "C_GetInfo": "p", "C_GetFunctionList": "p",
    "C_GetSlotList": "bpp", "C_GetSlotInfo": "hp", "C_GetTokenInfo": "hp",
    "C_GetMechanismList": "hpp", "C_GetMechanismInfo": "hzp", "C_InitToken": "hpzp",
    "C_InitPIN": "hpz", "C_SetPIN": "hpzpz", "C_OpenSession": "hfnnp", "C_CloseSession": "h",
    "C_CloseAllSessions": "h", "C_GetSessionInfo": "hp", "C_GetOperationState": "hpp",
    "C_SetOperationState": "hpzzz", "C_Login": "hzpz", "C_Logout": "h",
    "C_CreateObject": "hpzp", "C_CopyObject": "hhpzp", "C_DestroyObject": "hh",
    "C_GetObjectSize": "hhp", "C_GetAttributeValue": "hhpz", "C_SetAttributeValue": "hhpz",
    "C_FindObjectsInit": "hpz", "C_FindObjects": "hpzp", "C_FindObjectsFinal": "h",
    "C_EncryptInit": "hph", "C_Encrypt": "hpzpp", "C_EncryptUpdate": "hpzpp",
    "C_EncryptFinal": "hpp", "C_DecryptInit": "hph", "C_Decrypt": "hpzpp",
    "C_DecryptUpdate": "hpzpp", "C_DecryptFinal": "hpp", "C_DigestInit": "hp",
    "C_Digest": "hpzpp", "C_DigestUpdate": "hpz", "C_DigestKey": "hh", "C_DigestFinal": "hpp",
    "C_SignInit": "hph", "C_Sign": "hpzpp", "C_SignUpdate": "hpz", "C_SignFinal": "hpp",
    "C_SignRecoverInit": "hph", "C_SignRecover": "hpzpp", "C_VerifyInit": "hph",
    "C_Verify": "hpzpz", "C_VerifyUpdate": "hpz", "C_VerifyFinal": "hpz",
    "C_VerifyRecoverInit": "hph", "C_VerifyRecover": "hpzpp", "C_DigestEncryptUpdate": "hpzpp",
    "C_DecryptDigestUpdate": "hpzpp", "C_SignEncryptUpdate": "hpzpp",
    "C_DecryptVerifyUpdate": "hpzpp", "C_GenerateKey": "hppzp", "C_GenerateKeyPair": "hppzpzpp",
    "C_WrapKey": "hphhpp", "C_UnwrapKey": "hphpzpzp", "C_DeriveKey": "hphpzp",
    "C_SeedRandom": "hpz", "C_GenerateRandom": "hpz", "C_GetFunctionStatus": "h",
    "C_CancelFunction": "h", "C_WaitForSlotEvent": "fpn",
}
# The functions PKCS#11 3.0 adds after them, in CK_FUNCTION_LIST_3_0 order.
SIGNATURES_3_0: dict[str, str] = {
    "C_GetInterfaceList": "pp", "C_GetInterface": "pppf", "C_LoginUser": "hzpzpz",
    "C_SessionCancel": "hf", "C_MessageEncryptInit": "hph", "C_EncryptMessage": "hpzpzpzpp",
    "C_EncryptMessageBegin": "hpzpz", "C_EncryptMessageNext": "hpzpzppf",
    "C_MessageEncryptFinal": "h", "C_MessageDecryptInit": "hph",
    "C_DecryptMessage": "hpzpzpzpp", "C_DecryptMessageBegin": "hpzpz",
    "C_DecryptMessageNext": "hpzpzppf", "C_MessageDecryptFinal": "h",
    "C_MessageSignInit": "hph", "C_SignMessage": "hpzpzpp", "C_SignMessageBegin": "hpz",
    "C_SignMessageNext": "hpzpzpp", "C_MessageSignFinal": "h", "C_MessageVerifyInit": "hph",
    "C_VerifyMessage": "hpzpzpz", "C_VerifyMessageBegin": "hpz",
    "C_VerifyMessageNext": "hpzpzpz", "C_MessageVerifyFinal": "h",
}
CKF_INTERFACE_FORK_SAFE = 0x1
_CTYPE = {"h": CK_ULONG, "z": CK_ULONG, "f": CK_ULONG, "b": ctypes.c_ubyte,
          "p": ctypes.c_void_p, "n": ctypes.c_void_p}


class FunctionList(ctypes.Structure):
    _fields_ = [("version", ctypes.c_ubyte * 2)] + [(n, ctypes.c_void_p) for n in SIGNATURES]


class FunctionList30(ctypes.Structure):
    _fields_ = FunctionList._fields_ + [(n, ctypes.c_void_p) for n in SIGNATURES_3_0]


class Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class Interface(ctypes.Structure):
    _fields_ = [("pInterfaceName", ctypes.c_char_p), ("pFunctionList", ctypes.c_void_p),
                ("flags", CK_ULONG)]


class Mechanism(ctypes.Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", ctypes.c_void_p),
                ("ulParameterLen", CK_ULONG)]


class Attribute(ctypes.Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", ctypes.c_void_p), ("ulValueLen", CK_ULONG)]


class InitArgs(ctypes.Structure):
    _fields_ = [("CreateMutex", ctypes.c_void_p), ("DestroyMutex", ctypes.c_void_p),
                ("LockMutex", ctypes.c_void_p), ("UnlockMutex", ctypes.c_void_p),
                ("flags", CK_ULONG), ("pReserved", ctypes.c_void_p)]


class RawModule:
    """The module's function list through ctypes: exact return codes, any buffer."""

    def __init__(self, path: str) -> None:
        self.dll = ctypes.CDLL(path)  # same handle as python-pkcs11's dlopen of `path`
        get = self.dll.C_GetFunctionList
        get.restype = CK_ULONG
        get.argtypes = [ctypes.POINTER(ctypes.POINTER(FunctionList))]
        table = ctypes.POINTER(FunctionList)()
        if get(ctypes.byref(table)) != 0:
            raise RuntimeError("C_GetFunctionList failed")
        self.table = table.contents
        self._fns: dict[str, Callable[..., int]] = {}

    def __getattr__(self, name: str) -> Callable[..., int]:
        if not name.startswith("C_"):
            raise AttributeError(name)
        if name not in self._fns:
            kinds = SIGNATURES[name]
            proto = ctypes.CFUNCTYPE(CK_ULONG, *(_CTYPE[k] for k in kinds))
            self._fns[name] = proto(getattr(self.table, name))
        return self._fns[name]

    def initialize(self, os_locking: bool = False) -> int:
        if not os_locking:
            return self.C_Initialize(None)
        args = InitArgs(flags=CKF_OS_LOCKING_OK)
        return self.C_Initialize(ctypes.addressof(args))

    def slot_of(self, label: str) -> int:
        count = CK_ULONG(0)
        assert self.C_GetSlotList(1, None, ctypes.byref(count)) == 0
        slots = (CK_ULONG * count.value)()
        assert self.C_GetSlotList(1, slots, ctypes.byref(count)) == 0
        info = ctypes.create_string_buffer(512)  # CK_TOKEN_INFO starts with label[32]
        for slot in slots[: count.value]:
            assert self.C_GetTokenInfo(slot, info) == 0
            if info.raw[:32].decode().rstrip() == label:
                return slot
        raise RuntimeError(f"no token {label!r}")

    def threaded_sessions(self, token: str, pin: str, count: int,
                          key_label: str) -> tuple[list[int], int]:
        """Initialise for threads (CKF_OS_LOCKING_OK), open `count` sessions on
        the token, log the user in and find the private key by label."""
        assert self.initialize(os_locking=True) == 0
        slot = self.slot_of(token)
        sessions = []
        for _ in range(count):
            handle = CK_ULONG(0)
            assert self.C_OpenSession(slot, CKF_SERIAL_SESSION, None, None,
                                      ctypes.byref(handle)) == 0
            sessions.append(handle.value)
        secret = pin.encode()
        assert self.C_Login(sessions[0], CKU_USER, secret, len(secret)) == 0
        return sessions, self.find_private_key(sessions[0], key_label)

    def find_private_key(self, session: int, label: str) -> int:
        cls = CK_ULONG(CKO_PRIVATE_KEY)
        text = label.encode()
        template = (Attribute * 2)(
            Attribute(CKA_CLASS, ctypes.cast(ctypes.byref(cls), ctypes.c_void_p),
                      ctypes.sizeof(cls)),
            Attribute(CKA_LABEL, ctypes.cast(ctypes.c_char_p(text), ctypes.c_void_p), len(text)),
        )
        assert self.C_FindObjectsInit(session, template, 2) == 0
        handle, found = CK_ULONG(0), CK_ULONG(0)
        assert self.C_FindObjects(session, ctypes.byref(handle), 1, ctypes.byref(found)) == 0
        assert self.C_FindObjectsFinal(session) == 0
        assert found.value == 1, f"key {label!r} not found"
        return handle.value

    def sign_sized(self, session: int, mech: int, key: int, data: bytes,
                   sizes: list[int | None]) -> list[dict[str, Any]]:
        """C_SignInit, then one C_Sign per entry of `sizes` (None = NULL buffer)."""
        m = Mechanism(mech, None, 0)
        steps: list[dict[str, Any]] = [{"rv": self.C_SignInit(session, ctypes.byref(m), key)}]
        for size in sizes:
            length = CK_ULONG(size or 0)
            buf = ctypes.create_string_buffer(size) if size else None
            rv = self.C_Sign(session, data, len(data), buf, ctypes.byref(length))
            step: dict[str, Any] = {"buf": size, "rv": rv, "len": length.value}
            if rv == 0 and buf is not None:
                step["out"] = buf.raw[: length.value].hex()
            steps.append(step)
        return steps

    def get_attribute(self, session: int, obj: int, attr: int, size: int | None) -> dict[str, Any]:
        buf = ctypes.create_string_buffer(size) if size else None
        template = Attribute(attr, ctypes.cast(buf, ctypes.c_void_p) if buf else None, size or 0)
        rv = self.C_GetAttributeValue(session, obj, ctypes.byref(template), 1)
        length = template.ulValueLen
        out: dict[str, Any] = {"rv": rv, "len": -1 if length == UNAVAILABLE else length}
        if rv == 0 and buf is not None:
            out["value"] = buf.raw[:length].hex()
        return out


# --------------------------------------------------------------- scenarios


def scenario_import(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """Store the test's EC and RSA key pairs on the token with C_CreateObject."""
    import pkcs11
    from pkcs11 import Attribute as A
    from pkcs11 import KeyType, ObjectClass

    lib = pkcs11.lib(module)
    token = lib.get_token(token_label=args["token"])
    created = []
    with token.open(rw=True, user_pin=args["pin"]) as session:
        for key in args["keys"]:
            common = {A.TOKEN: True, A.LABEL: key["label"], A.ID: bytes.fromhex(key["id"])}
            if key["type"] == "ec":
                private = {A.KEY_TYPE: KeyType.EC, A.EC_PARAMS: bytes.fromhex(key["ec_params"]),
                           A.VALUE: bytes.fromhex(key["d"])}
                public = {A.KEY_TYPE: KeyType.EC, A.EC_PARAMS: bytes.fromhex(key["ec_params"]),
                          A.EC_POINT: bytes.fromhex(key["ec_point"])}
            else:
                n, e = bytes.fromhex(key["n"]), bytes.fromhex(key["e"])
                private = {A.KEY_TYPE: KeyType.RSA, A.MODULUS: n, A.PUBLIC_EXPONENT: e,
                           A.DECRYPT: True}
                for attr, name in ((A.PRIVATE_EXPONENT, "d"), (A.PRIME_1, "p"),
                                   (A.PRIME_2, "q"), (A.EXPONENT_1, "dmp1"),
                                   (A.EXPONENT_2, "dmq1"), (A.COEFFICIENT, "iqmp")):
                    private[attr] = bytes.fromhex(key[name])
                public = {A.KEY_TYPE: KeyType.RSA, A.MODULUS: n, A.PUBLIC_EXPONENT: e,
                          A.ENCRYPT: True}
            session.create_object({**common, **private, A.CLASS: ObjectClass.PRIVATE_KEY,
                                   A.PRIVATE: True, A.SENSITIVE: True, A.SIGN: True})
            session.create_object({**common, **public, A.CLASS: ObjectClass.PUBLIC_KEY,
                                   A.VERIFY: True})
            created.append(key["label"])
    return {"created": created}


def _outcome(fn: Callable[[], Any]) -> Any:
    """The result, or the python-pkcs11 exception name (its return-code class)."""
    import pkcs11

    try:
        value = fn()
    except pkcs11.PKCS11Error as exc:
        return {"error": type(exc).__name__}
    return value.hex() if isinstance(value, bytes) else value


def scenario_compare(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """Deterministic operations and error paths; the same module-independent
    result is expected directly and through the interposer."""
    import pkcs11
    from pkcs11 import Attribute as A
    from pkcs11 import Mechanism as M
    from pkcs11 import ObjectClass
    from pkcs11.mechanisms import MGF

    lib = pkcs11.lib(module)
    raw = RawModule(module)
    token = lib.get_token(token_label=args["token"])
    data = bytes(range(32))
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + data
    out: dict[str, Any] = {"token": token.label.strip()}
    with token.open(user_pin=args["pin"]) as session:
        s: Any = session  # python-pkcs11's stubs lack .handle and the key mixins
        ec = s.get_key(label="ec", object_class=ObjectClass.PRIVATE_KEY)
        ec_pub = s.get_key(label="ec", object_class=ObjectClass.PUBLIC_KEY)
        rsa = s.get_key(label="rsa", object_class=ObjectClass.PRIVATE_KEY)
        rsa_pub = s.get_key(label="rsa", object_class=ObjectClass.PUBLIC_KEY)
        pss = (M.SHA256, MGF.SHA256, 32)
        ecdsa_sig = ec.sign(data, mechanism=M.ECDSA)
        pss_sig = rsa.sign(data, mechanism=M.RSA_PKCS_PSS, mechanism_param=pss)
        out.update({
            "mechanisms": sorted(str(m) for m in token.slot.get_mechanisms()),
            "ec_params": ec[A.EC_PARAMS].hex(),
            "ec_id": ec[A.ID].hex(),
            "ec_value": _outcome(lambda: ec[A.VALUE]),  # sensitive: AttributeSensitive
            "sha256_rsa_pkcs": _outcome(lambda: rsa.sign(data, mechanism=M.SHA256_RSA_PKCS)),
            "rsa_pkcs_digestinfo": _outcome(lambda: rsa.sign(digest_info,
                                                             mechanism=M.RSA_PKCS)),
            "multipart_sha256_rsa_pkcs": _outcome(lambda: rsa.sign(
                iter([data[:10], data[10:], b"tail"]), mechanism=M.SHA256_RSA_PKCS)),
            "digest_sha256": _outcome(lambda: s.digest(data, mechanism=M.SHA256)),
            "oaep_decrypt": _outcome(lambda: rsa.decrypt(
                bytes.fromhex(args["oaep_ciphertext"]), mechanism=M.RSA_PKCS_OAEP,
                mechanism_param=(M.SHA_1, MGF.SHA1, None))),  # SoftHSM 2.6: SHA-1 only
            "ecdsa_len": len(ecdsa_sig),
            "ecdsa_verifies": ec_pub.verify(data, ecdsa_sig, mechanism=M.ECDSA),
            "ecdsa_bad_sig_verifies": ec_pub.verify(data, bytes(64), mechanism=M.ECDSA),
            "pss_verifies": rsa_pub.verify(data, pss_sig, mechanism=M.RSA_PKCS_PSS,
                                           mechanism_param=pss),
            "ec_with_rsa_mechanism": _outcome(lambda: ec.sign(data, mechanism=M.RSA_PKCS)),
            "rsa_pkcs_too_long": _outcome(lambda: rsa.sign(bytes(300), mechanism=M.RSA_PKCS)),
            "no_such_key": _outcome(lambda: s.get_key(label="nope").label),
        })
        # What python-pkcs11 hides: the buffer protocol and exact return codes.
        h = s.handle
        out["ecdsa_sizes"] = [
            {k: v for k, v in step.items() if k != "out"}  # ECDSA output is random
            for step in raw.sign_sized(h, CKM_ECDSA, ec.handle, data, [None, 10, 64])
        ]
        mech = Mechanism(CKM_ECDSA, None, 0)
        out["signinit_bad_key"] = raw.C_SignInit(h, ctypes.byref(mech), JUNK)
        out["rsa_sizes"] = raw.sign_sized(h, CKM_RSA_PKCS, rsa.handle, digest_info,
                                          [None, 255, 256])
        out["attr_null"] = raw.get_attribute(h, ec.handle, CKA_EC_PARAMS, None)
        out["attr_small"] = raw.get_attribute(h, ec.handle, CKA_EC_PARAMS, 2)
        out["attr_exact"] = raw.get_attribute(h, ec.handle, CKA_EC_PARAMS, 10)
        out["attr_sensitive"] = raw.get_attribute(h, ec.handle, CKA_VALUE, None)
        length = CK_ULONG(0)
        out["signfinal_no_init"] = raw.C_SignFinal(h, None, ctypes.byref(length))
        out["sign_bad_session"] = raw.C_Sign(JUNK, data, len(data), None, ctypes.byref(length))
    # Random signatures differ run to run: returned apart, for the test to verify.
    return {"same": out, "ecdsa_sig": ecdsa_sig.hex(), "pss_sig": pss_sig.hex()}


def scenario_all_functions(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """Every 2.40 function once, with a junk handle: the return code of each."""
    raw = RawModule(module)
    scratch = ctypes.create_string_buffer(4096)
    values = {"h": JUNK, "z": 0, "f": CKF_SERIAL_SESSION, "b": 0, "p": scratch, "n": None}
    rvs = {"C_GetInfo (before C_Initialize)": raw.C_GetInfo(scratch)}
    rvs["C_Initialize"] = raw.initialize()
    for name, kinds in SIGNATURES.items():
        if name in ("C_Initialize", "C_Finalize", "C_GetFunctionList"):
            continue
        ctypes.memset(scratch, 0, ctypes.sizeof(scratch))
        call_args = [values[k] for k in kinds]
        if name == "C_WaitForSlotEvent":
            call_args[0] = CKF_DONT_BLOCK  # never wait
        rvs[name] = getattr(raw, name)(*call_args)
    rvs["C_Finalize"] = raw.C_Finalize(None)
    return {"rv": rvs}


def scenario_threads(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """Several threads signing at once, each in its own session (as Java does)."""
    raw = RawModule(module)
    sessions, key = raw.threaded_sessions(args["token"], args["pin"], args["threads"], "ec")
    barrier = threading.Barrier(len(sessions))
    results: dict[int, list[int]] = {}

    def work(session: int) -> None:
        data = bytes(32)
        mech = Mechanism(CKM_ECDSA, None, 0)
        sig = ctypes.create_string_buffer(64)
        rvs = []
        barrier.wait()
        for _ in range(args["signatures"]):
            rvs.append(raw.C_SignInit(session, ctypes.byref(mech), key))
            length = CK_ULONG(64)
            rvs.append(raw.C_Sign(session, data, len(data), sig, ctypes.byref(length)))
        results[session] = rvs

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in sessions:
        raw.C_CloseSession(s)
    raw.C_Finalize(None)
    return {"nonzero_rvs": sorted({rv for rvs in results.values() for rv in rvs} - {0}),
            "calls": sum(len(v) for v in results.values())}


def scenario_initialize(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """Only C_Initialize: its return code (configuration errors show up here)."""
    raw = RawModule(module)
    rv = raw.initialize()
    if rv == 0:
        raw.C_Finalize(None)
    return {"rv": rv}


def _bind(table: ctypes.Structure, name: str) -> Callable[..., int]:
    """One entry of a function list as a callable with its PKCS#11 signature."""
    kinds = SIGNATURES.get(name) or SIGNATURES_3_0[name]
    pointer = getattr(table, name)
    if not pointer:
        raise RuntimeError(f"{name} is NULL in the function list")
    return ctypes.CFUNCTYPE(CK_ULONG, *(_CTYPE[k] for k in kinds))(pointer)


def _describe(interface: Interface) -> dict[str, Any]:
    version = Version.from_address(interface.pFunctionList)
    return {"name": (interface.pInterfaceName or b"").decode(),
            "version": [version.major, version.minor], "flags": interface.flags}


def scenario_interfaces(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """The PKCS#11 3.0 entry points, exactly (all before C_Initialize, as the
    standard allows), then calls through the list of the highest "PKCS 11"
    version offered: C_Initialize, C_GetInfo, C_GetSlotList and, for 3.x,
    C_LoginUser and C_SessionCancel on a junk session."""
    dll = ctypes.CDLL(module)
    if not hasattr(dll, "C_GetInterfaceList") or not hasattr(dll, "C_GetInterface"):
        return {"exported": False}
    get_list, get_one = dll.C_GetInterfaceList, dll.C_GetInterface
    get_list.restype = get_one.restype = CK_ULONG
    get_list.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    get_one.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, CK_ULONG]
    out: dict[str, Any] = {"exported": True}
    count = CK_ULONG(0)
    out["count_rv"] = get_list(None, ctypes.byref(count))
    out["count"] = count.value
    out["no_count_rv"] = get_list(None, None)
    buffer = (Interface * (count.value + 1))()
    small = CK_ULONG(count.value - 1)
    out["small_rv"] = get_list(buffer, ctypes.byref(small))
    out["small_count"] = small.value
    full = CK_ULONG(count.value + 1)  # larger than needed: fine, set to the count
    out["list_rv"] = get_list(buffer, ctypes.byref(full))
    out["interfaces"] = [_describe(i) for i in buffer[: full.value]]

    found = ctypes.POINTER(Interface)()

    def lookup(name: bytes | None, version: tuple[int, int] | None, flags: int = 0) -> Any:
        found.contents = Interface()  # reset: a failure must not show the last answer
        ver = Version(*version) if version else None
        rv = get_one(name, ctypes.byref(ver) if ver else None, ctypes.byref(found), flags)
        return {"rv": rv, **(_describe(found.contents) if rv == 0 else {})}

    out["get"] = {
        "default": lookup(None, None),
        "pkcs11": lookup(b"PKCS 11", None),
        "unknown_name": lookup(b"No Such Interface", None),
        "unknown_version": lookup(b"PKCS 11", (9, 9)),
        "fork_safe": lookup(b"PKCS 11", None, CKF_INTERFACE_FORK_SAFE),
        **{f"{major}.{minor}": lookup(b"PKCS 11", (major, minor))
           for major, minor in {tuple(i["version"]) for i in out["interfaces"]}},
    }
    out["get_no_out_rv"] = get_one(None, None, None, 0)

    # Calls through the highest "PKCS 11" version on offer.
    best = max((i for i in out["interfaces"] if i["name"] == "PKCS 11"),
               key=lambda i: i["version"])
    rv = get_one(b"PKCS 11", ctypes.byref(Version(*best["version"])), ctypes.byref(found), 0)
    assert rv == 0, rv
    v3 = best["version"][0] == 3
    table = (FunctionList30 if v3 else FunctionList).from_address(found.contents.pFunctionList)
    legacy = ctypes.POINTER(FunctionList)()
    get_fl = dll.C_GetFunctionList
    get_fl.restype = CK_ULONG
    assert get_fl(ctypes.byref(legacy)) == 0
    out["entries_unlike_c_getfunctionlist"] = [
        n for n in SIGNATURES if getattr(table, n) != getattr(legacy.contents, n)]
    info = ctypes.create_string_buffer(128)  # CK_INFO: cryptokiVersion first
    calls: dict[str, Any] = {"C_GetInfo (before C_Initialize)": _bind(table, "C_GetInfo")(info)}
    calls["C_Initialize"] = _bind(table, "C_Initialize")(None)
    calls["C_GetInfo"] = _bind(table, "C_GetInfo")(info)
    out["cryptoki_version"] = list(info.raw[:2])
    out["library_manufacturer"] = info.raw[2:34].decode(errors="replace").rstrip()
    slots = CK_ULONG(0)
    calls["C_GetSlotList"] = _bind(table, "C_GetSlotList")(0, None, ctypes.byref(slots))
    out["slot_count"] = slots.value
    if v3:
        pin, user = args.get("pin", "1234").encode(), b"someone"
        calls["C_LoginUser"] = _bind(table, "C_LoginUser")(JUNK, CKU_USER, pin, len(pin),
                                                           user, len(user))
        calls["C_SessionCancel"] = _bind(table, "C_SessionCancel")(JUNK, 0)
        calls["C_MessageSignFinal"] = _bind(table, "C_MessageSignFinal")(JUNK)
    calls["C_Finalize"] = _bind(table, "C_Finalize")(None)
    out["rv"] = calls
    return out


SCENARIOS = {
    "import": scenario_import, "compare": scenario_compare,
    "all-functions": scenario_all_functions, "threads": scenario_threads,
    "initialize": scenario_initialize, "interfaces": scenario_interfaces,
}

if __name__ == "__main__":
    name, module_path = sys.argv[1], sys.argv[2]
    scenario_args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    print(json.dumps(SCENARIOS[name](module_path, scenario_args)))
