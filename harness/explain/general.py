"""The general finding: what a failing call means when no specific rule
explains it — the call, the mechanism family, the sizes, what that return
code usually means for that function, and the next diagnostic step.

`p11tls explain` never answers "no rule matched": every failing call gets
at least this.
"""

from __future__ import annotations

import re

from harness.explain.model import Call, operation_of

SIGN_FAMILIES = (
    (re.compile(r"^CKM_ECDSA$"), "raw ECDSA (the client hashes, the token signs a digest)"),
    (re.compile(r"^CKM_ECDSA_SHA"), "ECDSA with hashing on the token (combined mechanism)"),
    (re.compile(r"^CKM_RSA_PKCS$"), "RSA PKCS#1 v1.5 over a DigestInfo made by the client"),
    (re.compile(r"^CKM_RSA_PKCS_PSS$"), "RSA-PSS over a digest made by the client"),
    (re.compile(r"^CKM_SHA.*_RSA_PKCS_PSS$"), "RSA-PSS with hashing on the token (combined)"),
    (re.compile(r"^CKM_SHA.*_RSA_PKCS$"), "RSA PKCS#1 v1.5 with hashing on the token (combined)"),
    (re.compile(r"^CKM_RSA_X_509$"), "raw RSA without padding (the client pads)"),
    (re.compile(r"^CKM_RSA_PKCS_OAEP$"), "RSA-OAEP"),
    (re.compile(r"^CKM_EDDSA$"), "EdDSA (signs the whole message)"),
    (re.compile(r"_KEY_PAIR_GEN$"), "key-pair generation"),
    (re.compile(r"^CKM_(SHA|MD5)"), "hashing or HMAC"),
    (re.compile(r"^CKM_(AES|DES)"), "symmetric cipher"),
    (re.compile(r"DERIVE"), "key derivation"),
)

# (function group, rv) -> what it usually means there; group "*" for any function.
MEANINGS: dict[tuple[str, str], str] = {
    ("sign", "CKR_DATA_LEN_RANGE"): "the token refuses an input of this length for this "
    "mechanism (a digest of the wrong size for raw ECDSA/RSA, or more data than the "
    "token buffers for a combined mechanism)",
    ("sign", "CKR_DATA_INVALID"): "the token refuses this input: for raw RSA a DigestInfo it "
    "does not accept, for combined mechanisms often a size limit reported as invalid data",
    ("sign", "CKR_GENERAL_ERROR"): "the module or card failed without saying why: usually "
    "the card's answer (status word) or the reader connection failed underneath",
    ("sign", "CKR_DEVICE_ERROR"): "the card or reader failed while signing",
    ("sign", "CKR_FUNCTION_FAILED"): "the token tried and failed (card error, size limit)",
    ("sign", "CKR_KEY_FUNCTION_NOT_PERMITTED"): "the key may not sign (CKA_SIGN false, or "
    "CKA_ALLOWED_MECHANISMS excludes this mechanism)",
    ("sign", "CKR_KEY_TYPE_INCONSISTENT"): "the mechanism does not fit the key's type "
    "(an RSA mechanism on an EC key or the other way round)",
    ("sign", "CKR_USER_NOT_LOGGED_IN"): "the key needs a login first (or a context-specific "
    "login, CKA_ALWAYS_AUTHENTICATE)",
    ("sign", "CKR_OPERATION_NOT_INITIALIZED"): "no signing operation was active: the init "
    "failed or a previous call ended it",
    ("sign", "CKR_FUNCTION_NOT_SUPPORTED"): "the module does not implement this function "
    "(often: no multi-part signing)",
    ("*", "CKR_MECHANISM_INVALID"): "the token does not offer this mechanism (for this key)",
    ("*", "CKR_MECHANISM_PARAM_INVALID"): "the token refuses these mechanism parameters",
    ("*", "CKR_ARGUMENTS_BAD"): "the client passed an argument the module rejects (a NULL "
    "pointer or an impossible length): a client or module bug",
    ("*", "CKR_TEMPLATE_INCOMPLETE"): "the template lacks an attribute the token needs",
    ("*", "CKR_TEMPLATE_INCONSISTENT"): "the template's attributes contradict each other or "
    "the token's policy",
    ("*", "CKR_ATTRIBUTE_VALUE_INVALID"): "an attribute value is refused (curve, key size, "
    "a flag the token does not allow)",
    ("*", "CKR_ATTRIBUTE_TYPE_INVALID"): "an attribute the token does not know",
    ("*", "CKR_KEY_SIZE_RANGE"): "the key size is outside what the token supports",
    ("*", "CKR_CURVE_NOT_SUPPORTED"): "the token does not support this curve",
    ("*", "CKR_DEVICE_MEMORY"): "the token is out of memory",
    ("*", "CKR_DEVICE_REMOVED"): "the token was removed during the call",
    ("*", "CKR_TOKEN_NOT_PRESENT"): "no token in the slot",
    ("*", "CKR_SESSION_HANDLE_INVALID"): "the session is gone (closed, or the module was "
    "finalized by another part of the process)",
    ("*", "CKR_CRYPTOKI_NOT_INITIALIZED"): "the module was not initialized (or was finalized "
    "by another library in the same process)",
    ("*", "CKR_USER_NOT_LOGGED_IN"): "the operation needs a login first",
    ("*", "CKR_GENERAL_ERROR"): "the module failed without saying why",
    ("*", "CKR_FUNCTION_FAILED"): "the module tried and failed",
    ("*", "CKR_FUNCTION_NOT_SUPPORTED"): "the module does not implement this function",
    ("*", "CKR_HOST_MEMORY"): "the module ran out of memory on the host",
    ("*", "CKR_DEVICE_ERROR"): "the card or reader reported an error",
    ("*", "CKR_OBJECT_HANDLE_INVALID"): "the object handle is not (or no longer) valid",
    ("*", "CKR_KEY_HANDLE_INVALID"): "the key handle is not (or no longer) valid",
}

NEXT_STEPS = {
    "sign": "Re-run with `p11tls explain` on an OpenSC debug log (OPENSC_DEBUG=9) or a "
    "pkcs11-spy log to see the card's answer; try the same mechanism and size with "
    "`pkcs11-tool --sign -m MECHANISM --input-file FILE` (raw mechanisms need a digest as "
    "input) to tell a token limit from a client bug; `p11tls sweep` finds a size limit.",
    "init": "List the token's mechanisms and their flags (`pkcs11-tool -M`) and the key's "
    "attributes (`pkcs11-tool -O`: CKA_SIGN, CKA_ALLOWED_MECHANISMS, key type).",
    "create": "Try the same key with `pkcs11-tool --write-object KEY.der --type privkey` and "
    "compare templates; check which key types and curves the token imports.",
    "login": "The token did not refuse the PIN (no CKR_PIN_* code): do not try it again. Look "
    "at the module's own log for the error underneath (the session, the reader, a TPM "
    "context), and at which library called C_Login.",
    "pin": "Read the retry counter first (`pkcs11-tool -T`, read-only) and do not try that PIN "
    "again until you know it is right.",
    "*": "Look at the call in a pkcs11-spy log (arguments and output) and at the module's own "
    "debug output for the error underneath.",
}


def group_of(fn: str) -> str:
    kind = operation_of(fn)
    if kind is not None and kind[0] in ("Sign", "Decrypt", "Encrypt", "Verify", "Digest"):
        return "init" if kind[1] == "init" else "sign"
    if fn in ("C_CreateObject", "C_GenerateKeyPair", "C_GenerateKey", "C_UnwrapKey"):
        return "create"
    if fn in ("C_Login", "C_LoginUser", "C_InitPIN", "C_SetPIN"):
        return "login"
    return "*"


def family(mechanism: str | None) -> str | None:
    if not mechanism:
        return None
    for pattern, text in SIGN_FAMILIES:
        if pattern.search(mechanism):
            return text
    return None


def meaning(call: Call) -> str:
    rv = call.rv or ""
    group = group_of(call.fn)
    found = MEANINGS.get((group, rv)) or MEANINGS.get(("*", rv))
    if found:
        return found
    if not rv:
        return "the log ends (or the next call starts) before the call returned"
    return f"{rv} is not a common answer to {call.fn}; see the PKCS#11 specification"


def general_finding(call: Call, harmless: bool) -> tuple[str, str]:
    """(summary, hint) for a failing call no specific rule explained."""
    # pasted text with a return code but no function name ("C_?")
    parts = [call.fn if call.fn != "C_?" else "A PKCS#11 call the text does not name"]
    if call.mechanism:
        kind = family(call.mechanism)
        parts.append(f"with {call.mechanism}" + (f" ({kind})" if kind else ""))
    where = " ".join(parts)
    size = call.operation_bytes or call.input_bytes
    sizes = []
    if size is not None:
        sizes.append(f"{size} bytes of input")
    if call.apdu_bytes is not None:
        sizes.append(f"an APDU of {call.apdu_bytes} data bytes")
    if call.key_type or call.curve:
        sizes.append(" ".join(p for p in (call.curve, (call.key_type or "").replace("CKK_", ""))
                              if p) + " key")
    rv = call.rv or "no return value"
    summary = (
        f"{where} returned {rv}" + (f" on {', '.join(sizes)}" if sizes else "") + ": "
        + meaning(call) + "."
    )
    if call.detail:
        summary += f" The module says: {call.detail}."
    if harmless:
        summary += (
            " The client went on normally after it (a later call succeeded), so this is "
            "probably a probe, not the cause."
        )
    group = group_of(call.fn)
    if group == "login" and (call.rv or "").startswith("CKR_PIN_"):
        group = "pin"
    return summary, NEXT_STEPS[group]
