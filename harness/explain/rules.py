"""Diagnosis rules: from a list of calls to plain-language causes and workarounds.

Each rule looks at the whole call list (some causes need context: a PIN
retried after a failure, a mechanism missing from the token's list) and
yields (call index, summary, hint). The hint names known workarounds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from harness.explain import card, general, names, openpgp, tpm2_rules
from harness.explain.model import Call, Finding, operation_of

# Results that are part of normal operation, not failures.
BENIGN = {
    "C_GetAttributeValue": {"CKR_ATTRIBUTE_TYPE_INVALID", "CKR_ATTRIBUTE_SENSITIVE"},
    "C_Login": {"CKR_USER_ALREADY_LOGGED_IN"},
    "C_Logout": {"CKR_USER_NOT_LOGGED_IN"},
    "C_Initialize": {"CKR_CRYPTOKI_ALREADY_INITIALIZED"},
    "C_Finalize": {"CKR_CRYPTOKI_NOT_INITIALIZED"},
    "C_GetTokenInfo": {"CKR_TOKEN_NOT_PRESENT"},
    "C_GetMechanismInfo": {"CKR_MECHANISM_INVALID"},
    "C_GetInterface": {"CKR_FUNCTION_NOT_SUPPORTED", "CKR_ARGUMENTS_BAD"},
    "C_WaitForSlotEvent": {"CKR_NO_EVENT", "CKR_FUNCTION_NOT_SUPPORTED"},
}

# Above this many bytes the input of a hash-and-sign mechanism cannot be a
# TLS 1.3 CertificateVerify (64 spaces + context string + a hash: 130-146 B),
# a digest or a DigestInfo: it is a TLS 1.2 transcript or other bulk data.
LARGE_INPUT = 256

COMBINED = re.compile(
    r"^CKM_(ECDSA_SHA3?_?\d+|SHA3?_?\d+_RSA_PKCS(_PSS)?|SHA1_RSA_PKCS(_PSS)?|DSA_SHA\d+)$"
)
PSS = re.compile(r"^CKM_(SHA3?_?\d+_)?RSA_PKCS_PSS$")
# Single-part only (PKCS#11 3.0: no C_SignUpdate/C_SignFinal with these)
RAW_SIGN = {
    "CKM_ECDSA", "CKM_RSA_PKCS", "CKM_RSA_X_509", "CKM_RSA_PKCS_PSS", "CKM_DSA", "CKM_EDDSA",
}
SIZE_REFUSED = {"CKR_DATA_LEN_RANGE", "CKR_DATA_INVALID"}
PIN_FAILURES = {
    "CKR_PIN_INCORRECT",
    "CKR_PIN_LOCKED",
    "CKR_PIN_LEN_RANGE",
    "CKR_PIN_EXPIRED",
    "CKR_PIN_INVALID",
}
KEY_CREATING = {"C_GenerateKeyPair", "C_GenerateKey", "C_DeriveKey", "C_UnwrapKey", "C_WrapKey"}
SIGNING = {"C_Sign", "C_SignUpdate", "C_SignFinal"}
# Failures that say nothing about the token's capacity or capabilities: the
# session, login or handle was wrong (these get no import/size diagnosis).
NOT_THE_TOKEN = {
    "CKR_USER_NOT_LOGGED_IN",
    "CKR_SESSION_HANDLE_INVALID",
    "CKR_SESSION_CLOSED",
    "CKR_SESSION_READ_ONLY",
    "CKR_OPERATION_NOT_INITIALIZED",
    "CKR_OPERATION_ACTIVE",
    "CKR_KEY_HANDLE_INVALID",
    "CKR_OBJECT_HANDLE_INVALID",
    "CKR_CRYPTOKI_NOT_INITIALIZED",
    "CKR_TOKEN_WRITE_PROTECTED",
}


# Calls that end a session or the library: without a return value in the log
# they did not fail (an OpenSC log often ends inside C_Finalize's clean-up).
CLEANUP = {"C_Finalize", "C_CloseSession", "C_CloseAllSessions", "C_Logout"}
# Calls clients make to find out what the token has: a failure followed by
# normal progress is a probe, not the cause.
QUERIES = {
    "C_GetAttributeValue", "C_GetMechanismInfo", "C_GetMechanismList", "C_GetTokenInfo",
    "C_GetSlotInfo", "C_GetSlotList", "C_GetSessionInfo", "C_GetInfo", "C_FindObjectsInit",
    "C_FindObjects", "C_FindObjectsFinal", "C_GetInterface", "C_GetInterfaceList",
    "C_GetFunctionStatus", "C_WaitForSlotEvent", "C_GetOperationState", "C_SeedRandom",
    "C_GetObjectSize",
}
# Successful calls that show a client going on normally after a failure.
PROGRESS = {
    "C_Sign", "C_SignFinal", "C_Decrypt", "C_Login", "C_CreateObject", "C_GenerateKeyPair",
    "C_SignInit", "C_DecryptInit", "C_DeriveKey", "C_Verify", "C_Encrypt",
}


def failed(call: Call) -> bool:
    """True if the call failed in a way that matters (not a size or probe result)."""
    if call.rv is None:
        if call.fn in CLEANUP:
            return False
        return bool(call.reader_error or call.status_word or (call.inferred and call.detail))
    if call.rv in ("CKR_OK", "CKR_BUFFER_TOO_SMALL"):
        return False
    return call.rv not in BENIGN.get(call.fn, ())


def harmless(calls: Sequence[Call], index: int) -> bool:
    """A failing call after which the client goes on normally: a query whose
    failure was followed by a successful operation, or a call that a later
    call of the same function repeated with success (a retry with other
    arguments)."""
    call = calls[index]
    later = calls[index + 1 :]
    if call.fn in QUERIES and any(c.ok and c.fn in PROGRESS for c in later):
        return True
    if call.fn in SIGNING or call.fn == "C_Login":
        return False  # a failed signature or login is never a probe
    return any(c.ok and c.fn == call.fn for c in later)


def first_failure(calls: Sequence[Call]) -> int | None:
    """The first call that failed and is not a probe (else the first that failed)."""
    failing = [i for i, call in enumerate(calls) if failed(call)]
    real = [i for i in failing if not harmless(calls, i)]
    chosen = real or failing
    return chosen[0] if chosen else None


def _rv(call: Call) -> str:
    return call.rv or "no return value in the log"


def _returned(call: Call) -> str:
    return f"returned {call.rv}" if call.rv else "failed (the log shows no return value)"


def _bytes(n: int | None) -> str:
    return f"{n} bytes" if n is not None else "an unknown number of bytes"


def _data(call: Call) -> str:
    size = call.operation_bytes or call.input_bytes
    return f"{size} bytes" if size is not None else "an unknown amount of data"


def _key(call: Call) -> str:
    parts = [p for p in (call.curve, (call.key_type or "").replace("CKK_", "")) if p]
    return f" ({' '.join(parts)} key)" if parts else ""


RuleCheck = Callable[..., Iterator[tuple[int, str, str]]]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: RuleCheck  # check(calls), or check(calls, lines) when `lines`
    lines: bool = False  # the rule also reads the log's text (module, server errors)


# --- 1. combined hash-and-sign mechanism given the TLS 1.2 transcript -------------


def _disable_list(mechanism: str) -> str:
    if "ECDSA" in mechanism:
        family = ["CKM_ECDSA_SHA224", "CKM_ECDSA_SHA256", "CKM_ECDSA_SHA384", "CKM_ECDSA_SHA512"]
    elif "PSS" in mechanism:
        family = ["CKM_SHA256_RSA_PKCS_PSS", "CKM_SHA384_RSA_PKCS_PSS", "CKM_SHA512_RSA_PKCS_PSS"]
    else:
        family = ["CKM_SHA256_RSA_PKCS", "CKM_SHA384_RSA_PKCS", "CKM_SHA512_RSA_PKCS"]
    if mechanism not in family:
        family.insert(0, mechanism)
    return "{ " + " ".join(family) + " }"


def _raw_for(mechanism: str) -> str:
    if "ECDSA" in mechanism:
        return "CKM_ECDSA over a 32/48/64-byte digest"
    if "PSS" in mechanism:
        return "CKM_RSA_PKCS_PSS over a digest"
    return "CKM_RSA_PKCS over a DigestInfo (or CKM_RSA_PKCS_PSS)"


def check_combined_large_input(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if call.fn not in SIGNING or not call.mechanism or not COMBINED.match(call.mechanism):
            continue
        size = max(call.operation_bytes or 0, call.input_bytes or 0, call.apdu_bytes or 0)
        refused = call.rv in ("CKR_FUNCTION_NOT_SUPPORTED", "CKR_MECHANISM_INVALID")
        if not failed(call) or size <= LARGE_INPUT or refused or call.rv in NOT_THE_TOKEN:
            continue
        apdu = ""
        if call.apdu_bytes:
            apdu = f" OpenSC sent it to the card in one APDU of {call.apdu_bytes} data bytes."
        summary = (
            f"{call.fn} with the combined hash-and-sign mechanism {call.mechanism}{_key(call)} "
            f"failed ({_rv(call)}) on {_bytes(size)} of input.{apdu} This is the TLS 1.2 "
            "transcript problem: TLS 1.2 CertificateVerify signs the whole handshake transcript "
            "(kilobytes), and a client that picks a combined mechanism hands all of it to the "
            "token, which has to hash it itself and runs out of buffer. TLS 1.3 signs about "
            "130 bytes, so the same key works there."
        )
        hint = (
            f"Make the client hash on the host and use {_raw_for(call.mechanism)}. "
            "Java SunPKCS11: add "
            f"`disabledMechanisms = {_disable_list(call.mechanism)}` to the provider "
            "configuration. SmartCard-HSM / Pico HSM: use the sc-hsm-embedded module "
            "(libsc-hsm-pkcs11.so), which does not advertise combined mechanisms, instead of "
            "OpenSC. OpenSSL (libp11, pkcs11-provider) and GnuTLS already hash on the host. "
            "Otherwise restrict this key to TLS 1.3."
        )
        yield i, summary, hint


# --- 2. TLS 1.3 with an RSA key on a token without RSA-PSS ------------------------


def _pss_refused(call: Call, uses_rsa: bool) -> bool:
    if not (call.mechanism and PSS.match(call.mechanism) and call.rv == "CKR_MECHANISM_INVALID"):
        return False
    if (operation_of(call.fn) or ("", ""))[1] == "init":
        return True
    return call.fn == "C_GetMechanismInfo" and uses_rsa


def check_tls13_rsa_without_pss(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    hint = (
        "TLS 1.3 allows only RSA-PSS in CertificateVerify (RFC 8446), so: use an EC key "
        "on this token (raw CKM_ECDSA works in TLS 1.3), or limit this key to TLS 1.2 "
        "(PKCS#1 v1.5 via CKM_RSA_PKCS), or use a module/firmware that offers "
        "CKM_RSA_PKCS_PSS. Modules that can use the card's raw RSA (CKM_RSA_X_509) can pad "
        "PSS on the host; check `pkcs11-tool --module MODULE -M`."
    )
    uses_rsa = any(
        call.key_type == "CKK_RSA" or "RSA" in (call.mechanism or "")
        for call in calls
        if call.fn != "C_GetMechanismInfo"
    )
    for i, call in enumerate(calls):
        if _pss_refused(call, uses_rsa):
            summary = (
                f"{call.fn} with {call.mechanism} returned {call.rv}: the token has no RSA-PSS. "
                "TLS 1.3 needs RSA-PSS for an RSA client key, so the handshake fails in TLS 1.3 "
                "while TLS 1.2 (PKCS#1 v1.5) works."
            )
            yield i, summary, hint
            return
    for i, call in enumerate(calls):
        listed = call.mechanisms
        if (
            listed
            and uses_rsa
            and {"CKM_RSA_PKCS", "CKM_RSA_X_509"} & set(listed)
            and not any(PSS.match(m) for m in listed)
        ):
            summary = (
                f"The token's mechanism list ({len(listed)} mechanisms) has RSA but no "
                "CKM_RSA_PKCS_PSS, and this log uses an RSA key: TLS 1.3 needs RSA-PSS for an "
                "RSA client key, so TLS 1.3 client authentication with it fails while "
                "TLS 1.2 works."
            )
            yield i, summary, hint
            return


# --- 3. private-key import refused -----------------------------------------------


def check_import_refused(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    generated = next((c for c in calls if c.fn == "C_GenerateKeyPair" and c.ok), None)
    for i, call in enumerate(calls):
        if call.fn != "C_CreateObject" or call.object_class != "CKO_PRIVATE_KEY":
            continue
        if not failed(call) or call.rv in NOT_THE_TOKEN:
            continue
        why = f" The module says: {call.detail}." if call.detail else ""
        gen = (
            f" Key generation on the token worked in this log (line {generated.line})."
            if generated is not None
            else ""
        )
        summary = (
            f"The token refused to import a private key{_key(call)}: C_CreateObject "
            f"{_returned(call)}.{why}{gen} Many tokens (OpenPGP cards such as Nitrokey Start/Gnuk, "
            "PIV cards, some HSMs) generate keys on the token but accept imported keys only "
            "for some algorithms or curves, or only through their own tools."
        )
        hint = (
            "Generate the key on the token instead (C_GenerateKeyPair, e.g. `pkcs11-tool "
            "--keypairgen --key-type EC:prime256v1 --id 01`) and have a certificate issued for "
            "it (in this harness: provisioning `generate` instead of `import`). If the key must "
            "be imported, use the token vendor's tool (for OpenPGP cards: gpg `keytocard`), "
            "check which key types and curves the card accepts for import, and try the "
            "template without CKA_SENSITIVE/CKA_EXTRACTABLE or other attributes the card "
            "does not support. A TPM (tpm2-pkcs11) takes private keys only through "
            "`tpm2_ptool import`."
        )
        yield i, summary, hint


# --- 4. CKR_MECHANISM_INVALID at an init call ------------------------------------


def check_mechanism_invalid(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        is_init = (operation_of(call.fn) or ("", ""))[1] == "init" or call.fn in KEY_CREATING
        if not is_init or call.rv not in ("CKR_MECHANISM_INVALID", "CKR_MECHANISM_PARAM_INVALID"):
            continue
        mech = call.mechanism or "the requested mechanism"
        if call.mechanism and PSS.match(call.mechanism):
            continue  # explained by tls13-rsa-without-pss / pss-params
        listed = next((c.mechanisms for c in calls[:i][::-1] if c.mechanisms), None)
        if call.rv == "CKR_MECHANISM_PARAM_INVALID":
            summary = (
                f"{call.fn} with {mech}{_key(call)} returned CKR_MECHANISM_PARAM_INVALID: the "
                "token offers the mechanism but not these parameters (for RSA-PSS: the hash, "
                "MGF or salt length)."
            )
        else:
            where = ""
            if listed is not None:
                where = (
                    " It is not in the token's mechanism list either."
                    if call.mechanism not in listed
                    else " The token lists it, so it does not fit this key (type or size)."
                )
            summary = (
                f"{call.fn} with {mech}{_key(call)} returned CKR_MECHANISM_INVALID: the token "
                f"(or module) does not offer this mechanism.{where}"
            )
        combined = bool(call.mechanism and COMBINED.match(call.mechanism))
        hint = (
            "List what the token offers with `pkcs11-tool --module MODULE -M` and make the "
            "client use one of those. "
            + (
                f"The client asked for a combined hash-and-sign mechanism: hash on the host and "
                f"use {_raw_for(call.mechanism or '')} instead. "
                if combined
                else ""
            )
            + "Java SunPKCS11 picks one mechanism per algorithm when the provider starts "
            "(steer it with enabledMechanisms/disabledMechanisms); OpenSSL and GnuTLS need only "
            "CKM_ECDSA, CKM_RSA_PKCS_PSS and CKM_RSA_PKCS."
        )
        yield i, summary, hint


# --- 5. wrong or locked PIN, and a PIN retried after CKR_PIN_INCORRECT --------------


def check_pin(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    wrong_before: list[int] = []
    retry_reported = False
    for i, call in enumerate(calls):
        if call.fn != "C_Login":
            continue
        who = f" as {call.user_type}" if call.user_type else ""
        sent = f" ({call.pin_len} characters sent)" if call.pin_len is not None else ""
        if wrong_before and not retry_reported and call.rv != "CKR_USER_ALREADY_LOGGED_IN":
            retry_reported = True
            summary = (
                f"C_Login{who} was tried again after {len(wrong_before)} CKR_PIN_INCORRECT "
                f"(the first at log line {calls[wrong_before[0]].line}); this try returned "
                f"{_rv(call)}. Every wrong try uses up one of the token's few PIN retries "
                "(often 3)."
            )
            hint = (
                "Stop automatic retries: a client that retries with a cached or configured PIN "
                "(a keystore loaded twice, a retry loop, a script run again) locks the token. "
                "Check the retry counter first (`pkcs11-tool -T` shows 'user PIN count low' / "
                "'final try')."
            )
            yield i, summary, hint
        if call.rv == "CKR_PIN_INCORRECT":
            wrong_before.append(i)
            summary = f"C_Login{who} returned CKR_PIN_INCORRECT{sent}: the token rejected the PIN."
            hint = (
                "Check the PIN the client is given (Java: the keystore password or callback; "
                "libp11: pin-value in the PKCS#11 URI; gnutls-cli: --pin or GNUTLS_PIN). Check "
                "the retry counter before trying again (`pkcs11-tool -T`)."
            )
            yield i, summary, hint
        elif call.rv == "CKR_PIN_LOCKED":
            summary = (
                f"C_Login{who} returned CKR_PIN_LOCKED: too many wrong PINs, the PIN is blocked."
            )
            hint = (
                "Unblock it with the SO PIN / PUK (`pkcs11-tool --login --login-type so "
                "--init-pin`, or the vendor's tool); a SoftHSM2 test token can simply be "
                "initialised again. A TPM (tpm2-pkcs11) locks the whole TPM instead: "
                "`tpm2_dictionarylockout --clear-lockout`."
            )
            yield i, summary, hint
        elif call.rv in PIN_FAILURES:
            summary = (
                f"C_Login{who} returned {call.rv}{sent}: the token does not accept this PIN "
                "(wrong length or format, or expired)."
            )
            hint = (
                "Check the PIN policy of the token (`pkcs11-tool -T` shows min/max PIN length) "
                "and change an expired PIN with `pkcs11-tool --change-pin`."
            )
            yield i, summary, hint


# --- 6. APDU transmit failure or card buffer limit ---------------------------------


def check_apdu_transmit(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if not call.reader_error:
            continue
        size = ""
        if call.apdu_bytes is not None:
            wire = f", {call.apdu_wire_bytes} bytes with header" if call.apdu_wire_bytes else ""
            size = f" An APDU with {call.apdu_bytes} data bytes{wire} was being sent."
        big = call.apdu_bytes is not None and call.apdu_bytes > 255
        summary = (
            f"The card connection failed during {call.fn}: {call.reader_error}.{size}"
            + (
                " That is an extended-length APDU, larger than many cards' and readers' "
                "buffers (a Pico HSM takes about 2 KB): the card could not take it."
                if big
                else ""
            )
            + f" The PKCS#11 call returned {_rv(call)}."
        )
        hint = (
            "Send less data per APDU: have the client hash on the host so only a 32-64 byte "
            "digest goes to the card (see combined-mechanism-large-input). Check that card and "
            "reader support extended-length APDUs of this size; OpenSC's max_send_size in "
            "opensc.conf only helps when the card driver can chain commands. If the size is "
            "small, check the reader/USB connection and the pcscd log (a card reset or removal "
            "looks the same)."
            if big or call.apdu_bytes is None
            else "The APDU was small, so this is not a buffer limit: check the reader/USB "
            "connection, pcscd (`pcscd -f -d`) and whether another process holds the card."
        )
        yield i, summary, hint


# --- 7. CKM_ECDSA given more than the curve size ----------------------------------


def check_ecdsa_input_too_long(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if call.fn not in SIGNING or call.mechanism != "CKM_ECDSA":
            continue
        size = call.operation_bytes or call.input_bytes
        limit = names.curve_size(call.curve)
        curve = call.curve or "any supported curve"
        if size is None or size <= (limit or names.LARGEST_ECDSA_INPUT):
            continue
        limit_text = f"{limit} bytes" if limit else f"{names.LARGEST_ECDSA_INPUT} bytes (P-521)"
        outcome = (
            f"The token rejected it ({call.rv})."
            if call.rv and call.rv != "CKR_OK"
            else "The token accepted it and signed a truncated value, so the signature "
            "will not verify against the data the peer hashes."
        )
        summary = (
            f"{call.fn} with raw CKM_ECDSA was given {size} bytes, longer than {curve} "
            f"can sign ({limit_text}): raw ECDSA signs a hash, so the client passed data "
            f"that was not hashed (or a longer hash). {outcome}"
        )
        hint = (
            "Hash on the host and pass only the digest (SHA-256 for P-256, SHA-384 for "
            "P-384, SHA-512 for P-521). A client that wants the token to hash must use "
            "CKM_ECDSA_SHA256 etc., if the token offers it."
        )
        yield i, summary, hint


# --- 8. multi-part signing refused -------------------------------------------------


def check_multipart_refused(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if call.fn not in ("C_SignUpdate", "C_SignFinal") or not failed(call):
            continue
        raw = call.mechanism in RAW_SIGN
        refused = call.rv in ("CKR_FUNCTION_NOT_SUPPORTED", "CKR_MECHANISM_INVALID")
        if not (refused or raw):
            continue
        mech = call.mechanism or "this mechanism"
        summary = (
            f"{call.fn} with {mech} failed ({_rv(call)}) after {_data(call)}: the client "
            "signs in parts (C_SignUpdate/C_SignFinal), and "
            + (
                f"{mech} is a single-part mechanism (PKCS#11 allows only C_Sign with it)."
                if raw
                else "the module does not sign in parts with this mechanism."
            )
        )
        hint = (
            "Make the client call C_Sign once: Java SunPKCS11 signs in parts when it uses a "
            "combined mechanism such as CKM_ECDSA_SHA256 or CKM_SHA256_RSA_PKCS; disable those "
            "(`disabledMechanisms = { … }` in the provider configuration) so it hashes on the "
            "host and calls C_Sign with CKM_ECDSA / CKM_RSA_PKCS. OpenSSL and GnuTLS call "
            "C_Sign once. Or use a module that implements multi-part signing."
        )
        yield i, summary, hint


# --- 9. raw ECDSA given more than the curve's order, curve not in the log -----------


def check_ecdsa_input_over_order(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if call.fn not in SIGNING or call.mechanism != "CKM_ECDSA" or call.curve:
            continue
        size = call.operation_bytes or call.input_bytes
        if size is None or call.rv not in SIZE_REFUSED:
            continue
        if not 32 < size <= names.LARGEST_ECDSA_INPUT:
            continue
        smaller = [c for c, n in (("P-256", 32), ("P-384", 48)) if n < size]
        summary = (
            f"{call.fn} with raw CKM_ECDSA was given a {size}-byte digest and returned "
            f"{call.rv}. That is longer than the order of a {' or '.join(smaller)} key; "
            "PKCS#11 says the token should use the leftmost bits, but this token refuses it "
            "(the log does not show the key's curve). Typical cause: TLS picked a signature "
            f"scheme whose hash is longer than the key's curve (ecdsa_secp384r1_sha384 with a "
            "P-256 key in TLS 1.2)."
        )
        hint = (
            "Make the client hash with the curve's own size (SHA-256 for P-256, SHA-384 for "
            "P-384) or truncate the digest to the curve's order before C_Sign; in TLS 1.2 "
            "restrict the signature algorithms to the curve's (OpenSSL `-sigalgs "
            "ECDSA+SHA256`, GnuTLS priority `-SIGN-ALL:+SIGN-ECDSA-SHA256`)."
        )
        yield i, summary, hint


# --- 10. combined mechanism failing on a small input: the card's hashing ----------------


def check_combined_small_input(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if call.fn not in SIGNING or not call.mechanism or not COMBINED.match(call.mechanism):
            continue
        size = max(call.operation_bytes or 0, call.input_bytes or 0)
        refused = call.rv in ("CKR_FUNCTION_NOT_SUPPORTED", "CKR_MECHANISM_INVALID")
        if not failed(call) or size > LARGE_INPUT or refused or call.rv in NOT_THE_TOKEN:
            continue
        shown = f"only {size} bytes" if size else "a small input"
        summary = (
            f"{call.fn} with the combined hash-and-sign mechanism {call.mechanism}{_key(call)} "
            f"failed ({_rv(call)}) on {shown}: not a size problem (a TLS 1.3 "
            "CertificateVerify is about 130 bytes). This points at the token's own hashing: "
            "the card (or its driver) advertises the combined mechanism but its hash-and-sign "
            "does not work (wrong hash, unsupported in firmware, or a driver bug)."
        )
        hint = (
            f"Hash on the host and use {_raw_for(call.mechanism)}: Java SunPKCS11 "
            f"`disabledMechanisms = {_disable_list(call.mechanism)}`; OpenSSL and GnuTLS do "
            "this already. Check the same mechanism with `pkcs11-tool --sign -m "
            f"{call.mechanism.removeprefix('CKM_')} --input-file SMALL` and report it to the "
            "module's maintainers."
        )
        yield i, summary, hint


# --- 11. an input-size limit (CKR_DATA_LEN_RANGE / CKR_DATA_INVALID) ---------------------


def check_input_size_limit(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if call.fn not in SIGNING | {"C_Decrypt", "C_Encrypt"} or call.rv not in SIZE_REFUSED:
            continue
        size = call.operation_bytes or call.input_bytes
        if call.mechanism == "CKM_ECDSA" or size is None:
            continue  # raw ECDSA: ecdsa-input-too-long / ecdsa-input-over-order
        ok_sizes = [
            c.operation_bytes or c.input_bytes or 0
            for c in calls
            if c.ok and c.fn in SIGNING and c.mechanism == call.mechanism
            and (c.operation_bytes or c.input_bytes or 0) < size
        ]
        bracket = (
            f" The same mechanism signed {max(ok_sizes)} bytes in this log, so the token's "
            f"limit lies between {max(ok_sizes)} and {size} bytes."
            if ok_sizes
            else ""
        )
        summary = (
            f"{call.fn} with {call.mechanism or 'its mechanism'}{_key(call)} returned "
            f"{call.rv} on {size} bytes: the token refuses an input of this size.{bracket}"
            + (
                " With a combined mechanism that is a buffer limit of the token's hashing "
                "(a TLS 1.2 transcript grows with the certificate chain)."
                if call.mechanism and COMBINED.match(call.mechanism)
                else ""
            )
        )
        hint = (
            "Keep the input under the limit: hash on the host and use a raw mechanism "
            "(CKM_ECDSA, CKM_RSA_PKCS, CKM_RSA_PKCS_PSS), or use TLS 1.3 (about 130 bytes "
            "signed). `p11tls sweep` measures the exact limit."
        )
        yield i, summary, hint


# --- 12. CKM_RSA_X_509 refused (host-side PSS padding for TLS 1.3) ----------------------


def check_rsa_x509_refused(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if call.mechanism != "CKM_RSA_X_509" or not failed(call) or call.rv in NOT_THE_TOKEN:
            continue
        if call.fn not in SIGNING | {"C_SignInit", "C_Decrypt", "C_DecryptInit"}:
            continue
        summary = (
            f"{call.fn} with CKM_RSA_X_509 (raw RSA, no padding) returned {_rv(call)}: the "
            "token refuses raw RSA. Clients use it to pad RSA-PSS on the host when the token "
            "has no CKM_RSA_PKCS_PSS (pkcs11-provider, some Java set-ups), which is what TLS "
            "1.3 needs for an RSA key; many cards forbid raw RSA on signing keys."
        )
        hint = (
            "In TLS 1.3 an RSA key on this token cannot sign: use an EC key, or limit this "
            "key to TLS 1.2 (PKCS#1 v1.5 via CKM_RSA_PKCS), or a token/firmware with "
            "CKM_RSA_PKCS_PSS. Check the key's CKA_ALLOWED_MECHANISMS (`pkcs11-tool -O`)."
        )
        yield i, summary, hint


# --- 13. RSA-PSS parameters (salt length) refused ---------------------------------------


_HASH_LEN = {"SHA_1": 20, "SHA224": 28, "SHA256": 32, "SHA384": 48, "SHA512": 64}
_PSS_HASH = re.compile(r"hash\w*=CKM_(SHA_1|SHA\d+)\b")


def check_pss_salt(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if not (call.mechanism and PSS.match(call.mechanism)) or not failed(call):
            continue
        params = call.params or ""
        found = _PSS_HASH.search(params)
        digest = _HASH_LEN.get(found.group(1)) if found else None
        odd_salt = call.salt_len is not None and digest is not None and call.salt_len != digest
        if call.rv != "CKR_MECHANISM_PARAM_INVALID" and not (
            odd_salt and call.rv not in NOT_THE_TOKEN
        ):
            continue
        salt = (
            f" The salt length asked for was {call.salt_len} bytes"
            + (f", the hash is {digest} bytes" if digest else "")
            + "."
            if call.salt_len is not None
            else ""
        )
        summary = (
            f"{call.fn} with {call.mechanism} returned {call.rv}: the token refuses these "
            f"RSA-PSS parameters ({params or 'not shown in the log'}).{salt} TLS 1.3 "
            "(RFC 8446) requires the salt length to equal the hash length and MGF1 with the "
            "same hash; some tokens accept only one salt length or only MGF1-SHA1."
        )
        hint = (
            "Use a salt as long as the hash (32 bytes for SHA-256). Check the token's PSS "
            "support with `pkcs11-tool --sign -m RSA-PKCS-PSS --hash-algorithm SHA256 --mgf "
            "MGF1-SHA256 --salt-len 32`; if it only takes other salt lengths, TLS 1.3 with "
            "this RSA key cannot work: use an EC key or TLS 1.2."
        )
        yield i, summary, hint


# --- 14. EC private key imported without CKA_EC_POINT ------------------------------------


def check_ec_import_without_point(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if call.fn != "C_CreateObject" or call.object_class != "CKO_PRIVATE_KEY":
            continue
        is_ec = call.key_type == "CKK_EC" or "CKA_EC_PARAMS" in call.template
        if not is_ec or not failed(call) or not call.template or "CKA_EC_POINT" in call.template:
            continue
        about_point = "point" in (call.detail or "").lower()
        if call.rv != "CKR_TEMPLATE_INCOMPLETE" and not about_point:
            continue  # refused for another reason (import-refused says so)
        summary = (
            f"C_CreateObject of an EC private key{_key(call)} {_returned(call)}, and its "
            "template has no CKA_EC_POINT. PKCS#11 does not require the public point on a "
            "private key, but tokens that store the key pair together (OpenSC's PKCS#15 "
            "cards, OpenPGP cards, several HSMs) need it to write the public part."
        )
        hint = (
            "Add CKA_EC_POINT (the DER OCTET STRING of the uncompressed point) to the private "
            "key's template, or import with `pkcs11-tool --write-object key.der --type "
            "privkey`, which does; or generate the key on the token."
        )
        yield i, summary, hint


# --- 15. the card's status word for the failing APDU -------------------------------------


def check_card_status(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if not call.status_word or not failed(call):
            continue
        sw = call.status_word
        summary = (
            f"During {call.fn} the card answered status word {sw[:2]} {sw[2:]}: "
            f"{card.meaning(sw)}. The PKCS#11 call returned {_rv(call)}."
            + (f" The APDU carried {call.apdu_bytes} data bytes." if call.apdu_bytes else "")
        )
        hint = (
            "The card, not the host, refused the command. "
            + (
                "6F00 on a large APDU usually means the card ran out of buffer: send less "
                "(hash on the host, raw mechanism). "
                if sw == "6F00"
                else ""
            )
            + "Compare with the card's documentation for this command, and try the operation "
            "with `pkcs11-tool` and OPENSC_DEBUG=9 to see the same APDU."
        )
        yield i, summary, hint


# --- 16. the token's PIN counter flags ---------------------------------------------------


PIN_FLAG_TEXT = {
    "CKF_USER_PIN_COUNT_LOW": "a wrong user PIN was entered since the last correct one",
    "CKF_USER_PIN_FINAL_TRY": "one more wrong user PIN locks the PIN",
    "CKF_USER_PIN_LOCKED": "the user PIN is locked",
}


def check_pin_flags(calls: Sequence[Call]) -> Iterator[tuple[int, str, str]]:
    seen: set[tuple[str, ...]] = set()
    for i, call in enumerate(calls):
        flags = tuple(f for f in call.pin_flags if f in PIN_FLAG_TEXT)
        if not flags or flags in seen:
            continue
        seen.add(flags)
        summary = (
            f"{call.fn} shows {' and '.join(flags)}: "
            + "; ".join(PIN_FLAG_TEXT[f] for f in flags)
            + ". Every further automatic login with a wrong PIN brings the token closer to "
            "(or keeps it in) a locked PIN."
        )
        hint = (
            "Stop clients that log in on their own until the PIN is checked; log in once "
            "with the right PIN (`pkcs11-tool --login --test`) to reset the counter, or "
            "unblock a locked PIN with the SO PIN / PUK."
        )
        yield i, summary, hint


RULES: tuple[Rule, ...] = (
    Rule("openpgp-import", "OpenSC <= 0.26's OpenPGP driver refuses the EC key import (seed 000)",
         openpgp.check, lines=True),
    Rule("tpm2-import", "tpm2-pkcs11 takes no private key through C_CreateObject",
         tpm2_rules.check_import, lines=True),
    Rule("tpm2-lockout", "the TPM's dictionary-attack lockout (CKR_PIN_LOCKED)",
         tpm2_rules.check_lockout, lines=True),
    Rule("tpm2-engine-session",
         "an OpenSSL engine made default breaks tpm2-pkcs11's TPM session (C_Login)",
         tpm2_rules.check_engine_session, lines=True),
    Rule("malformed-ec-point", "a malformed CKA_EC_POINT (P-521 on tpm2-pkcs11)",
         tpm2_rules.check_malformed_point, lines=True),
    Rule("pss-salt-server",
         "the server rejects a TPM's RSA-PSS signature (largest salt, not hash length)",
         tpm2_rules.check_pss_salt_server, lines=True),
    Rule(
        "combined-mechanism-large-input",
        "a combined hash-and-sign mechanism failing on a large input (TLS 1.2 transcript)",
        check_combined_large_input,
    ),
    Rule(
        "tls13-rsa-without-pss",
        "TLS 1.3 with an RSA key on a token without CKM_RSA_PKCS_PSS",
        check_tls13_rsa_without_pss,
    ),
    Rule(
        "import-refused",
        "private-key import (C_CreateObject) refused while generation would work",
        check_import_refused,
    ),
    Rule("mechanism-invalid", "CKR_MECHANISM_INVALID at an init call", check_mechanism_invalid),
    Rule("pin", "a wrong or locked PIN, or a PIN retried after CKR_PIN_INCORRECT", check_pin),
    Rule(
        "apdu-transmit",
        "an APDU transmit failure or a card buffer limit",
        check_apdu_transmit,
    ),
    Rule(
        "ecdsa-input-too-long",
        "CKM_ECDSA given an input longer than the curve size",
        check_ecdsa_input_too_long,
    ),
    Rule(
        "multipart-refused",
        "a single-part mechanism used multi-part, or multi-part signing refused",
        check_multipart_refused,
    ),
    Rule(
        "ecdsa-input-over-order",
        "raw CKM_ECDSA refusing a digest longer than the curve's order (curve not in the log)",
        check_ecdsa_input_over_order,
    ),
    Rule(
        "combined-mechanism-small-input",
        "a combined mechanism failing on a small input (the token's own hashing)",
        check_combined_small_input,
    ),
    Rule(
        "input-size-limit",
        "CKR_DATA_LEN_RANGE / CKR_DATA_INVALID for the size of the input",
        check_input_size_limit,
    ),
    Rule("rsa-x509-refused", "raw RSA (CKM_RSA_X_509) refused", check_rsa_x509_refused),
    Rule("pss-params", "RSA-PSS parameters (salt length, MGF) refused", check_pss_salt),
    Rule(
        "ec-import-without-point",
        "an EC private key imported without CKA_EC_POINT",
        check_ec_import_without_point,
    ),
    Rule("card-status", "the card's status word for the failing APDU", check_card_status),
    Rule("pin-flags", "the token's PIN counter flags", check_pin_flags),
)
GENERAL_RULE = "failed-call"
JAVA_RULE = "sunpkcs11-disabled"  # from SunPKCS11's own lines (harness.explain.formats.java_log)
RULE_NAMES = (*(rule.name for rule in RULES), GENERAL_RULE, JAVA_RULE)


def diagnose(calls: Sequence[Call], lines: Sequence[str] = ()) -> list[Finding]:
    """The findings of all rules, and a general finding for every failing call
    no rule explained. Real failures come first (in call order, rule order
    within a call), then the harmless ones (probes the client went past).
    `lines`, the log's text, is for rules that need more than the calls."""
    findings: list[Finding] = []
    probe = {i: harmless(calls, i) for i, call in enumerate(calls) if failed(call)}
    for rule in RULES:
        found = rule.check(calls, lines) if rule.lines else rule.check(calls)
        for index, summary, hint in found:
            findings.append(Finding(rule=rule.name, summary=summary, call=index, hint=hint,
                                    harmless=probe.get(index, False)))
    explained = {f.call for f in findings}
    for index, is_probe in probe.items():
        if index not in explained:
            summary, hint = general.general_finding(calls[index], is_probe)
            findings.append(Finding(rule=GENERAL_RULE, summary=summary, call=index, hint=hint,
                                    harmless=is_probe))
    order = {name: rank for rank, name in enumerate(RULE_NAMES)}
    return sorted(findings, key=lambda f: (f.harmless, f.call, order[f.rule]))
