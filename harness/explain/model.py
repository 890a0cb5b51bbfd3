"""The one call model every log format is parsed into."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field


class LogFormat(enum.Enum):
    """The call-log formats `p11tls explain` reads (value = the name in --json)."""

    HARNESS = "harness"  # this harness's own JSON-lines records (the interposer)
    PKCS11_SPY = "pkcs11-spy"  # OpenSC's pkcs11-spy.so
    P11_KIT = "p11-kit"  # p11-kit `log-calls: yes`
    PKCS11_LOGGER = "pkcs11-logger"  # Pkcs11Interop's pkcs11-logger
    OPENSC_DEBUG = "opensc-debug"  # OPENSC_DEBUG / opensc.conf `debug = N`
    TPM2_PKCS11 = "tpm2-pkcs11"  # tpm2-pkcs11's own log (TPM2_PKCS11_LOG_LEVEL)
    NSS_DEBUG = "nss-debug"  # NSS_DEBUG_PKCS11_MODULE with NSPR_LOG_MODULES=nss_mod_log:4
    PASTED = "pasted"  # any other text: error messages, tracebacks, tool output

    @property
    def title(self) -> str:
        return _TITLES[self]


_TITLES = {
    LogFormat.HARNESS: "p11tls interposer records",
    LogFormat.PKCS11_SPY: "OpenSC pkcs11-spy",
    LogFormat.P11_KIT: "p11-kit log-calls",
    LogFormat.PKCS11_LOGGER: "Pkcs11Interop pkcs11-logger",
    LogFormat.OPENSC_DEBUG: "OpenSC debug log",
    LogFormat.TPM2_PKCS11: "tpm2-pkcs11 log",
    LogFormat.NSS_DEBUG: "NSS PKCS#11 module debug log",
    LogFormat.PASTED: "pasted text (error messages, tracebacks, tool output)",
}


@dataclass(frozen=True)
class Call:
    """One PKCS#11 call as a log shows it.

    `input_bytes` is the data handed to the token: the data of C_Sign /
    C_Encrypt / C_Decrypt / C_Digest / C_Verify, the part of an *Update, and
    for a *Final the total of the operation's parts (what a token that hashes
    itself has to take in). `mechanism` is carried from the *Init onto the
    calls of the same operation. `rv` is None when the log ends (or, for an
    OpenSC debug log, the next call starts) before the call returned.
    """

    fn: str
    line: int  # 1-based line where the call starts in the log
    end_line: int
    rv: str | None = None
    mechanism: str | None = None
    input_bytes: int | None = None
    operation_bytes: int | None = None  # data of the whole operation up to this call
    session: str | None = None
    key_handle: str | None = None
    key_type: str | None = None  # CKK_ name of the key the operation uses
    curve: str | None = None  # "P-256" … when the log shows the key's CKA_EC_PARAMS
    object_class: str | None = None  # C_CreateObject: the class of the created object
    template: tuple[str, ...] = ()  # attribute types of the call's template
    user_type: str | None = None  # C_Login
    pin_len: int | None = None  # C_Login (the PIN itself is never kept)
    mechanisms: tuple[str, ...] | None = None  # C_GetMechanismList output
    apdu_bytes: int | None = None  # largest APDU data field sent during the call
    apdu_wire_bytes: int | None = None  # the same APDU with header, as the reader saw it
    reader_error: str | None = None  # PC/SC or transmit error during the call
    detail: str | None = None  # the module's own error message (OpenSC)
    status_word: str | None = None  # last error status word the card answered ("6F00")
    params: str | None = None  # mechanism parameters as the log shows them (PSS: salt …)
    salt_len: int | None = None  # RSA-PSS sLen, when the log shows it
    pin_flags: tuple[str, ...] = ()  # CKF_USER_PIN_* flags a C_GetTokenInfo showed
    ec_point_len: int | None = None  # length of a CKA_EC_POINT the call returned
    inferred: bool = False  # fn guessed from module internals, no PKCS#11 line seen
    inferred_from: str | None = None  # what an inferred fn was told from (`session.decrypt`)

    @property
    def ok(self) -> bool:
        return self.rv == "CKR_OK"

    def replace(self, **changes: object) -> Call:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ParsedLog:
    """What a parser read: the format, the calls in log order and the log's lines."""

    format: LogFormat
    calls: tuple[Call, ...]
    lines: tuple[str, ...] = field(repr=False, default=())
    problems: tuple[str, ...] = ()  # what the reader could not read (torn lines, gaps)
    # pasted text: failures of the TLS stack or engine itself, not of a PKCS#11 call
    client_errors: tuple[ClientError, ...] = ()


@dataclass(frozen=True)
class ClientError:
    """A failure the TLS stack or engine reported itself (OpenSSL, GnuTLS, curl …)."""

    stack: str
    line: int
    text: str


@dataclass(frozen=True)
class Finding:
    """One diagnosis: which rule, on which call, what it means, what to do.

    `harmless`: the call failed but the log goes on normally after it (a probe
    such as C_GetAttributeValue of an attribute the object lacks); such
    findings come after the real ones.
    """

    rule: str
    summary: str
    call: int | None  # index into the calls diagnosed (Explanation.calls); None: no call
    hint: str
    harmless: bool = False


# --- operations: carry mechanism, key and totals from *Init to Update/Final -----

_OPERATIONS = ("Sign", "Verify", "Encrypt", "Decrypt", "Digest", "SignRecover", "VerifyRecover")


def operation_of(fn: str) -> tuple[str, str] | None:
    """`C_SignUpdate` -> ("Sign", "update"); None for non-operation calls."""
    if not fn.startswith("C_"):
        return None
    name = fn[2:]
    for op in sorted(_OPERATIONS, key=len, reverse=True):
        if name == op:
            return op, "single"
        if name == op + "Init":
            return op, "init"
        if name == op + "Update":
            return op, "update"
        if name == op + "Final":
            return op, "final"
    return None


def key_type_for(mechanism: str) -> str | None:
    """The key type a signing/decryption mechanism implies (CKM_ECDSA_SHA256 -> CKK_EC)."""
    if mechanism.startswith("CKM_ECDSA"):
        return "CKK_EC"
    if mechanism == "CKM_EDDSA":
        return "CKK_EC_EDWARDS"
    if "RSA" in mechanism:
        return "CKK_RSA"
    return None


@dataclass
class _Operation:
    mechanism: str | None
    key_type: str | None
    curve: str | None
    params: str | None = None
    salt_len: int | None = None
    total: int = 0
    parts: int = 0


class KeyBook:
    """What a log reveals about objects (key type, curve), per module lifetime.

    Handles are only meaningful between one C_Initialize and the next (a spy
    file often holds several pkcs11-tool runs that all use handle 0x2), so
    the calls of each lifetime are resolved against that lifetime's objects.
    A key's attributes are often read *after* C_SignInit, hence the delay.
    """

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, str]] = {}
        self._pending: list[Call] = []
        self._done: list[Call] = []

    def learn(self, handle: str | None, **info: str | None) -> None:
        if handle:
            self.objects.setdefault(handle, {}).update({k: v for k, v in info.items() if v})

    def add(self, call: Call) -> None:
        if call.fn == "C_Initialize":
            self._flush()
        self._pending.append(call)

    def calls(self) -> list[Call]:
        self._flush()
        return link_operations(self._done)

    def _flush(self) -> None:
        for call in self._pending:
            info = self.objects.get(call.key_handle or "")
            if info:
                call = call.replace(
                    key_type=call.key_type or info.get("key_type"),
                    curve=call.curve or info.get("curve"),
                )
            self._done.append(call)
        self._pending = []
        self.objects = {}


def link_operations(calls: list[Call]) -> list[Call]:
    """Carry mechanism, key and input totals from each *Init to its operation."""
    active: dict[tuple[str | None, str], _Operation] = {}
    out: list[Call] = []
    for call in calls:
        kind = operation_of(call.fn)
        if kind is None:
            out.append(call)
            continue
        op, step = kind
        slot = (call.session, op)
        if step == "init":
            if call.key_type is None and call.mechanism:
                call = call.replace(key_type=key_type_for(call.mechanism))
            active.pop(slot, None)
            if call.rv in ("CKR_OK", None):
                active[slot] = _Operation(call.mechanism, call.key_type, call.curve,
                                          call.params, call.salt_len)
            out.append(call)
            continue
        if slot not in active and call.session is None:
            # Logs without session handles (OpenSC debug): the open operation of that kind.
            slot = next((k for k in active if k[1] == op), slot)
        state = active.get(slot)
        if state is not None:
            call = call.replace(
                mechanism=call.mechanism or state.mechanism,
                key_type=call.key_type or state.key_type,
                curve=call.curve or state.curve,
                params=call.params or state.params,
                salt_len=call.salt_len if call.salt_len is not None else state.salt_len,
            )
            if step == "update":
                state.total += call.input_bytes or 0
                state.parts += 1
                call = call.replace(operation_bytes=state.total)
            elif step == "final":
                if call.input_bytes is None and state.parts:
                    call = call.replace(input_bytes=state.total)
                call = call.replace(operation_bytes=call.input_bytes)
        if step == "single":
            call = call.replace(operation_bytes=call.input_bytes)
        # A failure ends the operation. A successful C_Sign/C_SignFinal may have
        # been a length query (NULL output buffer, CKR_OK) that the client
        # repeats, so the state stays for a repeat but not for new parts.
        if call.rv not in ("CKR_OK", None, "CKR_BUFFER_TOO_SMALL"):
            active.pop(slot, None)
        elif state is not None and step in ("single", "final"):
            state.parts = 0
            state.total = 0
        out.append(call)
    return out
