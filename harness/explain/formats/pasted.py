"""Any pasted text: error messages, tracebacks and tool output, prose around them.

Used when no structured log format matches. It finds the PKCS#11 events in
the text whatever printed them — a function with a return code in any
spelling (`rv = CKR_X (0x5)`, `returned CKR_X`, `failed: 0x00000007`,
`Returned 2147483768`), the wrappers' exceptions (SunPKCS11 and
Pkcs11Interop `PKCS11Exception`, PyKCS11's `PyKCS11Error`, python-pkcs11's
exception classes, Go's `pkcs11: 0x6: CKR_X`, pkcs11js `CKR_X:5`,
pkcs11-helper's `6-'CKR_X'`), OpenSSL error-queue entries whose reason is a
PKCS#11 code (libp11, pkcs11-provider), NSS's SEC_ERROR_PKCS11_* — and the
TLS stacks' own failures that involve no PKCS#11 call (OpenSSL, libp11's
messages, GnuTLS, NSS, curl, Go and Java TLS errors).

Each PKCS#11 event becomes a `Call`; where the text names the function only
through a wrapper method or a verb (`session.decrypt`, `engineSign`,
"Cannot initialize provider") the call is marked inferred, with what from.
The stack failures become `ParsedLog.client_errors`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from harness.explain import names
from harness.explain.model import Call, ClientError, LogFormat, ParsedLog
from harness.explain.redact import mask_pasted

# A code as people paste it: a CKR_ name, hex (0x5, 0x00000005) or decimal.
_CODE = r"(CKR_[A-Z0-9_]+|0x[0-9a-fA-F]+|\d+)"
_FN = r"(C_[A-Z][A-Za-z]+)"

# Function and code on one line, most specific first.
FN_AND_CODE = (
    # pkcs11-tool: error: PKCS11 function C_SignFinal failed: rv = CKR_GENERAL_ERROR (0x5)
    re.compile(r"PKCS#?11 function " + _FN + r"(?:\([^)]*\))? failed: rv = " + _CODE),
    # Pkcs11Interop: Method C_Initialize returned CKR_GENERAL_ERROR / Returned 2147483768
    re.compile(r"Method " + _FN + r" [Rr]eturned " + _CODE),
    # C_Sign() failed: 0x00000007 · C_SignInit returns (CKR_GENERAL_ERROR - 5) ·
    # C_SignInit fails with CKR_X · C_X rv=0x20
    re.compile(
        _FN + r"(?:\(\s*\w*\s*\))?\s+(?:returned|returns|fails with|failed with|failed|"
        r"error|rv|result)[\s:=(\"'`]*(?:rv\s*=\s*)?" + _CODE + r"\b"
    ),
    # C_Login: CKR_X · C_Sign = 0x20 (a bare number after ":" is too often something else)
    re.compile(_FN + r"(?:\(\s*\w*\s*\))?\s*[=:]\s*(CKR_[A-Z0-9_]+|0x[0-9a-fA-F]+)\b"),
)
# The same without the underscore people sometimes drop ("function CLogin failed").
_BARE_FN = re.compile(r"\bC([A-Z][a-z]+(?:[A-Z][a-z]+)*)\s+failed:?\s+" + _CODE)

# Code with failure wording but no function on the line.
CODE_ONLY = (
    re.compile(r"PKCS11Exception:\s*" + _CODE),  # SunPKCS11, Pkcs11Interop
    re.compile(r"PyKCS11Error:?\s*\(?\s*" + _CODE),
    re.compile(r"pkcs11: (0x[0-9a-fA-F]+)(?:: CKR_\w+)?"),  # Go miekg/pkcs11, crypto11
    re.compile(r"Unmapped error code " + _CODE),  # python-pkcs11
    re.compile(r"\b\d+[-:]'(CKR_[A-Z0-9_]+)'"),  # pkcs11-helper (OpenVPN)
    re.compile(r"\brv\s*=\s*(?:\d+\s*=\s*)?(CKR_[A-Z0-9_]+|0x[0-9a-fA-F]+)"),
    re.compile(r"(?:[Rr]eturn(?:ed|s|ing)|[Ee]rror|[Ff]ail(?:ed|s|ure)|[Ee]xception)\b[^.]*?"
               r"\b(CKR_(?!OK\b)[A-Z0-9_]+)"),
    re.compile(r"\b(CKR_(?!OK\b)[A-Z0-9_]+)\W{0,3}\s+(?:error|failure)\b"),
    re.compile(r"^\s*(?:Error\s+)?(CKR_(?!OK\b)[A-Z0-9_]+)\s*(?:\(0x[0-9a-fA-F]+\))?\s*$"),
)

# python-pkcs11 exception classes (pkcs11.exceptions.PinIncorrect) by CKR name.
PYTHON_PKCS11 = re.compile(r"\bpkcs11\.exceptions\.([A-Z]\w+)")
# python-pkcs11's own text for CKR_CRYPTOKI_NOT_INITIALIZED (pkcs11/_errors.pyx)
PYTHON_PKCS11_NOT_INIT = re.compile(r"Initialisation error \(not initialized\)")

# NSS maps module return codes to SEC_ERROR_PKCS11_*.
NSS_CODES = {
    "SEC_ERROR_PKCS11_GENERAL_ERROR": "CKR_GENERAL_ERROR",
    "SEC_ERROR_PKCS11_FUNCTION_FAILED": "CKR_FUNCTION_FAILED",
    "SEC_ERROR_PKCS11_DEVICE_ERROR": "CKR_DEVICE_ERROR",
}
NSS_ERROR = re.compile(r"\b(SEC_ERROR_PKCS11_[A-Z_]+)\b")

# OpenSSL error queue: error:CODE:LIB:FUNC:REASON (1.1) or error:CODE:LIB::REASON (3.x).
OPENSSL_ERROR = re.compile(r"error:([0-9A-Fa-f]{8,16}):([^:\n]*):([^:\n]*):([^:\n]*)")
# Libraries whose reason codes are PKCS#11 return codes: libp11's engine (PKCS11_* functions,
# "Vendor defined" in OpenSSL 1.x), pkcs11-provider ("pkcs11", "PKCS#11 module").
P11_LIBRARIES = re.compile(r"^(pkcs11|PKCS#11 module|PKCS11|Vendor defined|libp11)$")
LIBP11_OWN_REASONS = 1024  # libp11's own reasons start here (P11_R_*): not CKR codes

# Wrapper methods and verbs -> the PKCS#11 function they call.
METHOD_FUNCTIONS = (
    (re.compile(r"(?i)engineSign|\bsign(?:_value|Final|Update)?\b|signature"), "C_Sign"),
    (re.compile(r"(?i)\bdecrypt"), "C_Decrypt"),
    (re.compile(r"(?i)\bencrypt"), "C_Encrypt"),
    (re.compile(r"(?i)generate\w*key_?pair|keypairgen"), "C_GenerateKeyPair"),
    (re.compile(r"(?i)generate_?key\b"), "C_GenerateKey"),
    (re.compile(r"(?i)\blog_?in\b|\blogin"), "C_Login"),
    (re.compile(r"(?i)__dealloc__|\bfinali[sz]e"), "C_Finalize"),
    (re.compile(r"(?i)initiali[sz]|\bload\b|C_INITIALIZE_ARGS"), "C_Initialize"),
    (re.compile(r"(?i)get_?slot"), "C_GetSlotList"),
    (re.compile(r"(?i)open_?session|\bopen\b"), "C_OpenSession"),
    (re.compile(r"(?i)find_?objects"), "C_FindObjects"),
)
# Where a method name shows: a Python frame (`in decrypt`), a Java frame, `session.sign(`.
FRAME = re.compile(
    r"^\s*File \"[^\"]*\", line \d+, in (?:[\w.]*\.)?(\w+)\s*$|^\s*at [\w.$]*?\.(\w+)\(|"
    r"\b(?:session|lib|pkcs11|crypto11|token|Session)\.(\w+)\b|"
    r"Exception ignored in: '[\w.]*?\.(\w+)'"
)
# Frames of the native call itself: SunPKCS11's wrapper, pkcs11js.
NATIVE = re.compile(r"sun\.security\.pkcs11\.wrapper\.PKCS11\.(C_\w+)\(|PKCS11::(C_\w+)")
# A call written out near the code (`C_Sign(session, ...)` then `rv = 33`).
NEARBY_CALL = re.compile(r"\b(C_[A-Z][A-Za-z]+)\s*\(")
NEARBY = 3
# libp11's function names in its OpenSSL errors -> the PKCS#11 call behind them.
LIBP11_FUNCTIONS = {
    "PKCS11_rsa_encrypt": "C_Sign", "PKCS11_private_encrypt": "C_Sign", "PKCS11_sign": "C_Sign",
    "PKCS11_ecdsa_sign": "C_Sign", "PKCS11_rsa_sign": "C_Sign", "PKCS11_login": "C_Login",
    "PKCS11_private_decrypt": "C_Decrypt", "PKCS11_CTX_load": "C_Initialize",
    "PKCS11_enumerate_slots": "C_GetSlotList",
}
CONTEXT = 8  # lines around an exception searched for its frames
OWN_EVENT = re.compile(r"\bCKR_(?!OK\b)\w+|pkcs11: 0x|Returned \d{3,}")

# TLS stacks' and engines' own failures (no PKCS#11 return code in them).
CLIENT_ERRORS = (
    ("OpenSSL", re.compile(r"error:[0-9A-Fa-f]{8,16}:[^\n]*")),
    ("libp11", re.compile(r"PKCS11_get_private_key returned NULL|Specified object not found|"
                          r"cannot load Private Key from engine|Unable to enumerate certificates|"
                          r"failed to enumerate slots")),
    ("curl", re.compile(r"curl: \(\d+\) [^\n]+")),
    ("GnuTLS", re.compile(r"requested PKCS #11 object is not available|GnuTLS error[^\n]*|"
                          r"Cannot import private key[^\n]*|SSL error: [^\n]+")),
    ("NSS", re.compile(r"\b(?:SSL_ERROR|SEC_ERROR)_[A-Z_]+\b")),
    ("Go TLS", re.compile(r"\b(?:remote error: )?tls: [a-z][^\n]*")),
    ("Java TLS", re.compile(r"javax\.net\.ssl\.SSL\w*Exception[^\n]*")),
    ("tpm2-tss", re.compile(r"Esys_\w+\(\) Esys Finish ErrorCode \(0x[0-9a-fA-F]+\)")),
)

# What the text seems to come from -> what to capture next.
SOURCES = (
    (re.compile(r"sun\.security\.pkcs11|SunPKCS11|javax\.net\.ssl"), "Java SunPKCS11",
     "run the client with -Djava.security.debug=sunpkcs11 (and showInfo = true in the "
     "provider configuration), or under PKCS11SPY"),
    (re.compile(r"pkcs11-provider|PKCS11_PROVIDER|error:41"), "OpenSSL with pkcs11-provider",
     "set PKCS11_PROVIDER_DEBUG=file:p11prov.log,level:1 and run again"),
    (re.compile(r"engine|PKCS11_\w+|libp11"), "OpenSSL with the libp11 engine",
     "run the client with the module behind pkcs11-spy (PKCS11SPY=the module, the spy as the "
     "module path)"),
    (re.compile(r"GnuTLS|gnutls|p11tool|certtool"), "GnuTLS",
     "set GNUTLS_DEBUG_LEVEL=4 and run again, or put the module behind pkcs11-spy"),
    (re.compile(r"SEC_ERROR|SSL_ERROR|Firefox|NSS|certutil"), "NSS (Firefox, certutil)",
     "set NSS_DEBUG_PKCS11_MODULE to the module's name and NSPR_LOG_MODULES=nss_mod_log:4"),
    (re.compile(r"PyKCS11|pkcs11\.exceptions|_pkcs11\.pyx|Traceback"), "a Python wrapper",
     "run the script with PYKCS11LIB / the module behind pkcs11-spy (PKCS11SPY)"),
    (re.compile(r"Pkcs11Interop|Pkcs11Exception"), "Pkcs11Interop",
     "load the module through pkcs11-logger (PKCS11_LOGGER_LIBRARY_PATH, "
     "PKCS11_LOGGER_LOG_FILE_PATH)"),
    (re.compile(r"pkcs11-tool|opensc|OpenSC"), "OpenSC",
     "run again with OPENSC_DEBUG=9 (or debug = 9 in opensc.conf)"),
    (re.compile(r"OpenVPN|PKCS#11: "), "OpenVPN / pkcs11-helper",
     "raise OpenVPN's verb to 7 and put the module behind pkcs11-spy"),
    (re.compile(r"tpm2|TPM2|Esys_"), "tpm2", "set TPM2_PKCS11_LOG_LEVEL=2 and run again"),
    (re.compile(r"pkcs11: 0x|crypto11"), "a Go wrapper",
     "put the module behind pkcs11-spy (PKCS11SPY) and run again"),
)
DEFAULT_CAPTURE = ("the client", "a pkcs11-spy log (PKCS11SPY=the module; the spy as the "
                   "module) or the module's own debug log")


def source_of(text: str) -> tuple[str, str]:
    """(what the text seems to come from, what to capture next for it)."""
    for pattern, tool, capture in SOURCES:
        if pattern.search(text):
            return tool, capture
    return DEFAULT_CAPTURE


def _code(raw: str) -> str | None:
    """A pasted code as a CKR_ name, or None for what is no PKCS#11 code."""
    raw = raw.strip()
    if raw.startswith("CKR_"):  # a known name, and a failure: pasted text shows no OK calls
        return raw if raw != "CKR_OK" and names.return_code_value(raw) is not None else None
    value = names.number(raw)
    if value is None:
        return None
    name = names.return_code_name(value)
    if name and (name.startswith("CKR_") and value != 0):
        return name
    return None


def _function(name: str) -> str | None:
    return name if name in names.FUNCTIONS else None


def _openssl_code(match: re.Match[str]) -> tuple[str | None, str | None]:
    """(CKR name, libp11 function) of an OpenSSL error whose reason is a PKCS#11 code."""
    code, library, function = match.group(1), match.group(2).strip(), match.group(3).strip()
    if not P11_LIBRARIES.match(library) and not function.startswith("PKCS11_"):
        return None, None
    value = int(code[-8:], 16)
    # OpenSSL 3 packs the reason in the low 23 bits, 1.1 in the low 12.
    reason = value & 0x7FFFFF if value & 0x7FFFFF < 0x1000 else value & 0xFFF
    if reason == 0 or reason >= LIBP11_OWN_REASONS:
        return None, None
    return names.return_code_name(reason), function or None


def _inferred(lines: Sequence[str], at: int) -> tuple[str | None, str | None, bool]:
    """(function, what it was told from, inferred?) for an exception at line index `at`.

    A native frame (`PKCS11.C_SignFinal(Native Method)`) names the function; a
    wrapper method or a verb only suggests it.
    """
    window = range(max(0, at - CONTEXT), min(len(lines), at + CONTEXT + 1))
    for i in window:
        native = NATIVE.search(lines[i])
        name = native and (native.group(1) or native.group(2))
        if name and _function(name):
            return name, None, False
    for i in range(at, max(-1, at - NEARBY - 1), -1):
        written = NEARBY_CALL.search(lines[i])
        if written and _function(written.group(1)):
            return written.group(1), f"`{written.group(1)}(` written in the text", True
    # The wrapper's method nearest the exception line, before it first (Python
    # tracebacks end with the raising frame), then after (Java frames follow).
    for i in sorted(window, key=lambda i: (abs(i - at) if i <= at else abs(i - at) + 0.5)):
        if i != at and OWN_EVENT.search(lines[i]):
            continue  # a line with its own failure: its frames are its own
        for found in FRAME.finditer(lines[i]):
            method = next(g for g in found.groups() if g)
            for pattern, fn in METHOD_FUNCTIONS:
                if pattern.search(method):
                    return fn, f"`{method}`", True
    words = CKR_NAME.sub(" ", lines[at])  # CKR_CRYPTOKI_NOT_INITIALIZED is no verb
    for pattern, fn in METHOD_FUNCTIONS:
        verb = pattern.search(words)
        if verb:
            return fn, f"\"{verb.group(0)}\"", True
    return None, None, False


# Codes only a login (or a PIN change) returns: the function they imply.
LOGIN_CODES = {"CKR_PIN_INCORRECT", "CKR_PIN_LOCKED", "CKR_PIN_LEN_RANGE", "CKR_PIN_EXPIRED",
               "CKR_USER_TYPE_INVALID", "CKR_USER_ALREADY_LOGGED_IN",
               "CKR_USER_ANOTHER_ALREADY_LOGGED_IN", "CKR_USER_PIN_NOT_INITIALIZED"}
LOGIN_FUNCTIONS = {"C_Login", "C_LoginUser", "C_InitPIN", "C_SetPIN", "C_InitToken"}
CKR_NAME = re.compile(r"\bCKR_\w+")
UNKNOWN_FUNCTION = "C_?"  # the text has the code but names no function at all


def parse(lines: Sequence[str]) -> ParsedLog:
    calls: list[Call] = []
    client: list[ClientError] = []
    seen: dict[str, int] = {}  # rv -> index of the call that has it (one event, many lines)
    shown = mask_pasted(lines)  # what may be quoted: PINs masked
    for index, line in enumerate(lines):
        number = index + 1
        fn: str | None = None
        rv: str | None = None
        source: str | None = None
        inferred = False
        for pattern in FN_AND_CODE:
            found = pattern.search(line)
            if found:
                groups = [g for g in found.groups() if g]
                name = next((g for g in groups if g.startswith("C_")), None)
                code = next((g for g in groups if g is not name), None)
                if name and code and _function(name) and _code(code):
                    fn, rv = name, _code(code)
                    break
        if rv is None:
            bare = _BARE_FN.search(line)
            if bare and _function("C_" + bare.group(1)) and _code(bare.group(2)):
                fn, rv = "C_" + bare.group(1), _code(bare.group(2))
        if rv is None:
            for pattern in CODE_ONLY:
                found = pattern.search(line)
                if found and _code(found.group(1)):
                    rv = _code(found.group(1))
                    break
        if rv is None:
            found = PYTHON_PKCS11.search(line)
            if found:
                rv = names.exception_class_code(found.group(1))
        if rv is None and PYTHON_PKCS11_NOT_INIT.search(line):
            rv = "CKR_CRYPTOKI_NOT_INITIALIZED"
        if rv is None:
            found = NSS_ERROR.search(line)
            if found and found.group(1) in NSS_CODES:
                rv, fn, source = NSS_CODES[found.group(1)], UNKNOWN_FUNCTION, None
        if rv is None:
            for found in OPENSSL_ERROR.finditer(line):
                code, function = _openssl_code(found)
                if code:
                    rv = code
                    if function:
                        fn = LIBP11_FUNCTIONS.get(function)
                        source, inferred = (f"`{function}`", True) if fn else (None, False)
                    break
        if rv is not None and fn is None:
            fn, source, inferred = _inferred(lines, index)
            if rv in LOGIN_CODES and fn not in LOGIN_FUNCTIONS:
                # only a login answers with these (python-pkcs11's token.open logs in)
                fn, source, inferred = "C_Login", f"the code {rv}", True
        if rv is not None:
            previous = seen.get(rv)
            if previous is not None and number - calls[previous].end_line <= CONTEXT:
                # The same failure printed again (exception line, then its message):
                # keep one call, the better named.
                old = calls[previous]
                better = fn not in (None, UNKNOWN_FUNCTION) and (
                    old.fn == UNKNOWN_FUNCTION or (old.inferred and not inferred))
                calls[previous] = (old.replace(fn=fn, inferred=inferred, inferred_from=source,
                                               end_line=number) if better
                                   else old.replace(end_line=number))
                continue
            seen[rv] = len(calls)
            calls.append(Call(fn=fn or UNKNOWN_FUNCTION, line=number, end_line=number, rv=rv,
                              inferred=inferred, inferred_from=source))
            continue
        for stack, pattern in CLIENT_ERRORS:
            found = pattern.search(line)
            if found:
                quoted = pattern.search(shown[index])
                text = (quoted or found).group(0).strip()[:200]
                client.append(ClientError(stack, number, text))
                break
    return ParsedLog(LogFormat.PASTED, tuple(calls), tuple(lines),
                     client_errors=tuple(client))
