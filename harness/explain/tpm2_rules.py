"""Diagnosis rules for tpm2-pkcs11 (a TPM 2.0 behind PKCS#11) and for a server
that rejects a TPM's RSA-PSS signature.

Most need to know the log comes from tpm2-pkcs11 (its own log lines, its TSS,
its name): the same return codes mean something else on a smart card. They
see the log's lines for that (`tpm2_log.mentions_tpm2`); the module's own
error text is in each call's `detail` when the log is tpm2-pkcs11's.
Measured on tpm2-pkcs11 1.9 over swtpm 0.7 (harness/data/modules/tpm2.toml).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from harness.explain.formats.tpm2_log import mentions_tpm2
from harness.explain.model import Call

PSS = re.compile(r"^CKM_(SHA\d+_)?RSA_PKCS_PSS$")
# OpenSSL's RSA_R_SLEN_CHECK_FAILED, and what TLS stacks print around it
SALT_CHECK = re.compile(r"salt length check failed|SLEN_CHECK_FAILED|sLen check failed", re.I)
BAD_SIGNATURE = re.compile(
    r"bad signature|SSL_R_BAD_SIGNATURE|decrypt[ _]error|GNUTLS_E_PK_SIG_VERIFY_FAILED|"
    r"Signature verification failed|signature check failed", re.I)
ENGINE_ECDH = re.compile(r"Get ephemeral key|iesys_cryptossl_get_ecdh_point")
EC_POINT_PARSE = re.compile(r"cannot obtain and parse EC_POINT|malformed CKA_EC_POINT|"
                            r"EC_POINT.*(?:parse|decod)", re.I)
# DER OCTET STRING around a 133-byte P-521 point must use a long-form length
# (04 81 85 …, 136 bytes); tpm2-pkcs11 1.9 writes 04 85 … (135 bytes).
MALFORMED_POINT_LENGTHS = {135: "P-521"}


def _tpm2(calls: Sequence[Call], lines: Sequence[str]) -> bool:
    return mentions_tpm2(tuple(lines)) or any(
        c.detail and ("Esys_" in c.detail or "tpm:" in c.detail) for c in calls)


def check_import(calls: Sequence[Call], lines: Sequence[str]) -> Iterator[tuple[int, str, str]]:
    tpm2 = _tpm2(calls, lines)
    for i, call in enumerate(calls):
        if call.fn != "C_CreateObject" or call.object_class != "CKO_PRIVATE_KEY":
            continue
        told = "Can only create" in (call.detail or "")
        if call.rv != "CKR_ATTRIBUTE_VALUE_INVALID" and not told:
            continue
        if not (tpm2 or told):
            continue
        yield i, (
            f"tpm2-pkcs11 refused C_CreateObject of a private key ({call.rv or 'refused'}): a "
            "TPM token takes no private key through PKCS#11, only public keys and data objects "
            "(it would have to wrap the key with the TPM's storage key, which this path does "
            "not do). This is a property of tpm2-pkcs11, not a bad template."
        ), (
            "Generate the key on the TPM (C_GenerateKeyPair; in this harness provisioning "
            "`generate`), or import an existing key with `tpm2_ptool import --algorithm ecc|rsa "
            "--privkey KEY.pem --label TOKEN --userpin …`, which wraps it for the TPM."
        )


def check_lockout(calls: Sequence[Call], lines: Sequence[str]) -> Iterator[tuple[int, str, str]]:
    tpm2 = _tpm2(calls, lines)
    wrong = 0
    for i, call in enumerate(calls):
        if call.fn != "C_Login":
            continue
        if call.rv == "CKR_PIN_INCORRECT":
            wrong += 1
            continue
        in_lockout = "lockout" in (call.detail or "").lower()
        if call.rv != "CKR_PIN_LOCKED" or not (tpm2 or in_lockout):
            continue
        before = f" after {wrong} wrong PIN(s) in this log" if wrong else ""
        yield i, (
            f"C_Login returned CKR_PIN_LOCKED{before}: the TPM's dictionary-attack protection "
            "is in lockout. Every wrong PIN counts against the whole TPM (not this token), and "
            "once the counter reaches its maximum (3 on a fresh swtpm) the TPM refuses every "
            "authorisation, the right PIN included, until the recovery time has passed or the "
            "lockout is cleared. There is no SO PIN unblock for this."
        ), (
            "Clear it with the TPM's lockout authorisation: `tpm2_dictionarylockout "
            "--clear-lockout` (TPM2TOOLS_TCTI pointing at the TPM), or wait out the recovery "
            "time. On a test TPM, `tpm2_dictionarylockout --setup-parameters --max-tries=1000 "
            "--recovery-time=0 --lockout-recovery-time=0` stops it. Then fix the PIN the "
            "client is given before it tries again."
        )
        return


def check_engine_session(calls: Sequence[Call],
                         lines: Sequence[str]) -> Iterator[tuple[int, str, str]]:
    in_lines = any(ENGINE_ECDH.search(line) for line in lines[:20000])
    for i, call in enumerate(calls):
        if call.fn != "C_Login" or call.rv != "CKR_GENERAL_ERROR":
            continue
        if not (ENGINE_ECDH.search(call.detail or "") or in_lines):
            continue
        yield i, (
            "C_Login returned CKR_GENERAL_ERROR because tpm2-pkcs11 could not start its "
            "encrypted session with the TPM: its TSS (tss2-esys) failed to make an ephemeral "
            "ECDH key (iesys_cryptossl_get_ecdh_point: Get ephemeral key). That happens when "
            "the process made an OpenSSL ENGINE the default for every algorithm — `openssl "
            "s_client/pkeyutl -engine pkcs11` does — so the TSS's own ECDH goes to the libp11 "
            "engine, i.e. back into the token. The PIN was never checked."
        ), (
            "Do not pass `-engine pkcs11`: give the key as `-key "
            "org.openssl.engine:pkcs11:pkcs11:…` with `-keyform engine` only (OpenSSL 3 loads "
            "the engine for that key alone), or use pkcs11-provider; set PKCS11_MODULE_PATH "
            "for the module."
        )
        return


def _point_call(calls: Sequence[Call], lines: Sequence[str]) -> tuple[int, int | None] | None:
    for i, call in enumerate(calls):
        if call.ec_point_len in MALFORMED_POINT_LENGTHS:
            return i, call.ec_point_len
    for number, line in enumerate(lines[:20000], start=1):
        if EC_POINT_PARSE.search(line) and calls:
            before = [i for i, c in enumerate(calls) if c.end_line < number]
            reads = [i for i in before if calls[i].fn in ("C_GetAttributeValue",
                                                          "C_GenerateKeyPair")]
            return (reads or before or [0])[-1], None
    return None


def check_malformed_point(calls: Sequence[Call],
                          lines: Sequence[str]) -> Iterator[tuple[int, str, str]]:
    found = _point_call(calls, lines)
    if found is None:
        return
    i, length = found
    if length is None and not _tpm2(calls, lines):
        return  # a parse error alone, on another module, may be the client's
    shown = (f"a CKA_EC_POINT of {length} bytes: a {MALFORMED_POINT_LENGTHS[length]} point is "
             "133 bytes, so its DER OCTET STRING needs a long-form length (04 81 85, 136 bytes "
             "in all), but this one has a short-form length byte (04 85)"
             if length else "a CKA_EC_POINT the client could not parse")
    yield i, (
        f"The token returned {shown}. tpm2-pkcs11 1.9 encodes the public point of a P-521 "
        "key this way; the call itself returned CKR_OK, but no client can read the public "
        "key, so no certificate can be issued or matched for it."
    ), (
        "Use P-256 or P-384 keys on this token (their points are under 128 bytes), or a "
        "tpm2-pkcs11 release that encodes the length correctly; the key itself is fine, only "
        "its CKA_EC_POINT attribute is malformed."
    )


def check_pss_salt_server(calls: Sequence[Call],
                          lines: Sequence[str]) -> Iterator[tuple[int, str, str]]:
    head = lines[:20000]
    salt = next((n for n, line in enumerate(head, start=1) if SALT_CHECK.search(line)), None)
    bad = next((n for n, line in enumerate(head, start=1) if BAD_SIGNATURE.search(line)), None)
    signed = [i for i, c in enumerate(calls)
              if c.ok and c.fn in ("C_Sign", "C_SignFinal") and c.mechanism
              and PSS.match(c.mechanism)]
    if not signed or (salt is None and not (bad is not None and _tpm2(calls, lines))):
        return
    i = signed[-1]
    call = calls[i]
    asked = f" (the client asked for salt {call.salt_len})" if call.salt_len is not None else ""
    evidence = (f"the server's \"salt length check failed\" (log line {salt})" if salt
                else f"the server's bad-signature error (log line {bad})")
    yield i, (
        f"{call.fn} with {call.mechanism} returned CKR_OK{asked}, yet {evidence} says the "
        "peer rejected the signature. TPMs sign RSA-PSS with the largest salt the key allows "
        "(for RSA-2048 and SHA-256: 222 bytes), whatever salt length PKCS#11 asked for, while "
        "TLS 1.3 (RFC 8446) requires salt = hash length (32 bytes) and OpenSSL verifies it "
        "exactly. Known as tpm2-pkcs11#417 and tpm2-openssl#114/#115."
    ), (
        "Use an EC key on the TPM for TLS 1.3 (ECDSA has no salt), or TLS 1.2 with "
        "rsa_pkcs1_sha256 (PKCS#1 v1.5). Check the TPM with `pkcs11-tool --sign -m "
        "RSA-PKCS-PSS --hash-algorithm SHA256 --mgf MGF1-SHA256 --salt-len 32` and verify the "
        "signature with `openssl pkeyutl -verify -pkeyopt rsa_pss_saltlen:32`. (swtpm signs "
        "with salt = hash length: the harness's TLS 1.3 RSA cases pass on it.)"
    )
