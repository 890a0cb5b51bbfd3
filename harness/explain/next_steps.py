"""The end of every explanation: what to run here to see it again, and what
the harness has measured about it.

- `p11tls run --p11-existing` on the user's own token (read-only: its keys,
  nothing created), selecting the failing client, key and TLS version;
- the emulation profile that reproduces it, where one does;
- `p11tls token-sweep` when an input limit is suspected;
- which log to capture next.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.explain import facts
from harness.explain.context import Context
from harness.explain.formats import pasted
from harness.explain.model import Call, Finding, LogFormat, operation_of

FACT_RULE = "measured"
SIZE_LIKE = {"CKR_DATA_LEN_RANGE", "CKR_DATA_INVALID", "CKR_GENERAL_ERROR", "CKR_DEVICE_ERROR",
             "CKR_FUNCTION_FAILED", "CKR_BUFFER_TOO_SMALL"}
LARGE_INPUT = 256  # more than any digest or TLS 1.3 CertificateVerify input
CAPTURE = {
    LogFormat.OPENSC_DEBUG: "a pkcs11-spy log of the same run (PKCS11SPY=the module, the spy "
    "as the module) shows every call's arguments and sizes",
    LogFormat.TPM2_PKCS11: "a pkcs11-spy log of the same run shows the calls around it",
}
DEFAULT_CAPTURE = ("the module's own debug log around the failing call shows the error "
                   "underneath (OpenSC: OPENSC_DEBUG=9; tpm2-pkcs11: TPM2_PKCS11_LOG_LEVEL=2; "
                   "NSS: NSS_DEBUG_PKCS11_MODULE)")
TOKEN = "--p11-module MODULE --p11-token-label LABEL"
PROVISIONING = {"C_CreateObject": "import", "C_GenerateKeyPair": "generate"}
NOUNS = {"import": "an import", "generate": "a key generation"}


def _signing(call: Call | None) -> bool:
    kind = operation_of(call.fn) if call else None
    return kind is not None and kind[0] == "Sign" and kind[1] != "init"


def limit_suspected(call: Call | None, context: Context) -> bool:
    """A signing call refused in a way token buffers refuse (or a Java TLS 1.2
    signature, which streams the whole transcript)."""
    if call is None or call.rv not in SIZE_LIKE:
        return False
    size = call.operation_bytes or call.input_bytes
    if _signing(call) and size is not None:
        return size > LARGE_INPUT
    return (_signing(call) or call.fn == pasted.UNKNOWN_FUNCTION) and (
        call.rv in ("CKR_DATA_LEN_RANGE", "CKR_DATA_INVALID")
        or (context.client == "java" and context.tls == "1.2"))


def _facts(call: Call | None, context: Context, lines: Sequence[str]) -> list[facts.Fact]:
    """The measured failures that fit, one per profile (or data file): the same
    failure measured again on other versions says nothing new here."""
    found = facts.failures(call.rv if call else None, call.fn if call else None, context.client,
                           context.key, context.tls, "\n".join(lines[:5000]))
    return list({(f.profile, f.source): f for f in reversed(found)}.values())[::-1]


def fact_findings(call: Call | None, index: int | None, context: Context,
                  lines: Sequence[str]) -> list[Finding]:
    """What the harness measured about this case, as findings (first)."""
    out = []
    for fact in _facts(call, context, lines)[:2]:
        where = (f"under the emulation profile {fact.profile}" if fact.profile
                 else f"as a {fact.source}")
        summary = f"The harness has measured this {where}: {fact.reason}."
        if fact.mechanism and fact.input_bytes:
            summary += (f" There the client signs with {fact.mechanism}, "
                        f"{fact.input_bytes} bytes or more in one operation.")
        profile = facts.profile(fact.profile) if fact.profile else None
        if profile is not None:
            summary += (f" The profile emulates {profile.emulates}; its source: "
                        f"{facts.first_sentence(profile.source)}")
        fix = facts.workaround(fact, context.key)
        hint = ""
        if fix is not None:
            hint = (f"Measured workaround: {', '.join(fix.clients)} (SunPKCS11 with "
                    f"disabledMechanisms listing the combined CKM_ECDSA_SHA* / "
                    f"CKM_SHA*_RSA_PKCS* mechanisms) signs with {fix.mechanism}"
                    + (f" over {fix.input_bytes} bytes" if fix.input_bytes else "")
                    + " and passes. ")
        if fact.profile:
            markers = Context(context.client, context.key, context.key_marker,
                              context.tls).markers()
            hint += (f"See it here without the device: `p11tls run --p11-profile "
                     f"{fact.profile}" + (f' -m "{markers}"' if markers else "") + "`.")
        out.append(Finding(FACT_RULE, summary, index, hint.strip() or
                           "Compare with your versions: the entry is keyed to the versions "
                           "it was measured on."))
    stack = facts.signing_call(context.client, context.key, context.tls)
    if stack is not None and (call is None or _signing(call) or call.fn == pasted.UNKNOWN_FUNCTION):
        size = (f"{stack.input_bytes} bytes" if stack.input_bytes else "its input")
        how = ("in one C_Sign" if stack.parts == 0 else
               "streamed through C_SignUpdate" if stack.parts else "")
        tls = f" in TLS {context.tls}" if context.tls else ""
        out.append(Finding(FACT_RULE, (
            f"Measured on the default stack (SoftHSM2): {context.client} with a {context.key} "
            f"key{tls} asks the token for {stack.mechanism} over {size} {how}".rstrip() + ". "
            "A token that refuses that mechanism or that size fails here."
            + (f" The failing call here is {call.fn}, a multi-part signature: the client took "
               "a combined mechanism (CKM_ECDSA_SHA*, CKM_SHA*_RSA_PKCS*) this token lists "
               "and SoftHSM2 does not, and hands it the whole input."
               if call is not None and call.fn in ("C_SignUpdate", "C_SignFinal")
               and stack.parts == 0 else "")),
            index, "Compare with `pkcs11-tool -M` (the token's mechanisms and flags); "
            "`p11tls token-sweep` measures the input the token takes."))
    return out


def next_steps(fmt: LogFormat, call: Call | None, context: Context,
               lines: Sequence[str]) -> tuple[str, ...]:
    """The commands and captures to run next, most useful first."""
    steps: list[str] = []
    rv = call.rv if call else None
    markers = context.markers()
    select = f' -m "{markers}"' if markers else ""
    if rv == "CKR_PIN_LOCKED":
        steps.append("The PIN is locked: unblock it with the SO PIN (or the card's PUK) "
                     "before anything else; nothing here tries it.")
    elif rv and rv.startswith("CKR_PIN_"):
        steps.append("Read the retry counter first (`pkcs11-tool -T`, read-only: "
                     "CKF_USER_PIN_COUNT_LOW / FINAL_TRY) and do not try that PIN again; "
                     "p11tls checks a PIN once and never logs in on a final try.")
    provisioning = PROVISIONING.get(call.fn) if call else None
    if provisioning:
        # read-only mode makes no key: an import or generation shows only when the harness
        # makes its own (labelled p11tls-…, removed at the end; nothing else is touched)
        markers = " and ".join(p for p in (provisioning, markers) if p)
        select = f' -m "{markers}"'
        steps.append(f"See it on your own token: `p11tls run {TOKEN}{select}` makes its own "
                     f"key objects (labelled p11tls-…, destroyed at the end; read-only "
                     f"--p11-existing cannot show {NOUNS[provisioning]}).")
    elif rv != "CKR_PIN_LOCKED":
        steps.append(f"See it on your own token, read-only (its keys and certificates, "
                     f"nothing created): `p11tls run {TOKEN} --p11-existing{select}`.")
    profiles = [f.profile for f in _facts(call, context, lines) if f.profile]
    if limit_suspected(call, context):
        mechanism = call.mechanism if call else None
        profiles += facts.names_of(facts.limit_profiles(rv, mechanism))
        steps.append(f"Measure the token's input limit per mechanism, directly (no TLS): "
                     f"`p11tls token-sweep {TOKEN}"
                     + (f" --mechanisms {mechanism}" if mechanism else "") + "`.")
    if call is not None and call.fn == "C_CreateObject":
        profiles += facts.names_of(facts.refusing_profiles(call.object_class, call.key_type,
                                                           call.rv or "CKR_GENERAL_ERROR"))
    for name in dict.fromkeys(profiles):
        found = facts.profile(name)
        what = f" (an emulation of {found.emulates})" if found else ""
        steps.append(f"Reproduce it without the device: `p11tls run --p11-profile {name}"
                     f"{select}`{what}.")
    if fmt is LogFormat.PASTED:
        tool, capture = pasted.source_of("\n".join(lines[:5000]))
        steps.append(f"Capture next ({tool}): {capture}; then `p11tls explain` that log.")
    else:
        steps.append(f"Capture next: {CAPTURE.get(fmt, DEFAULT_CAPTURE)}.")
    return tuple(steps)
