"""Why a handshake failed when the client never asked the token to sign.

The runner calls `explain_without_signing` for a failed case whose calls
hold no signing operation: the cause is then in what the token offers for
the key (its mechanism list), the TLS version, or what the client and server
said. The result has the shape of `p11tls explain --json`'s findings, so
reports show it the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from harness.explain.formats import java_log

RSA_PSS = ("CKM_RSA_PKCS_PSS",)
COMBINED_ECDSA = re.compile(r"^CKM_ECDSA_SHA")
RSA_HOST_PSS = ("CKM_RSA_X_509",)  # clients that pad PSS on the host need raw RSA

# (pattern in the client's or server's error, rule, summary, hint)
ERROR_PATTERNS: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (
        re.compile(r"no suitable signature algorithm|NO_SUITABLE_SIGNATURE_ALGORITHM|"
                   r"no_suitable_sig|No supported (CertificateVerify )?signature|"
                   r"signature algorithms? .*not supported",
                   re.IGNORECASE),
        "no-signature-algorithm",
        "The client found no signature algorithm both it (with this key on the token) and the "
        "server accept, so it never asked the token to sign.",
        "Compare the token's mechanisms (`pkcs11-tool -M`) with what the TLS version needs for "
        "this key type (TLS 1.3 RSA: CKM_RSA_PKCS_PSS; ECDSA: CKM_ECDSA), and the server's "
        "signature_algorithms.",
    ),
    (
        re.compile(r"PIN|login|CKR_USER_NOT_LOGGED_IN|password", re.IGNORECASE),
        "login",
        "The client failed around the login, before any signature.",
        "Check the PIN the client is given and the token's PIN counter (`pkcs11-tool -T`).",
    ),
    (
        re.compile(r"(could not|unable to|cannot|failed to) (load|find|open)[^\n]*(key|object|"
                   r"certificate|uri)|no such (key|object)|object not found|not found in "
                   r"keystore", re.IGNORECASE),
        "key-not-found",
        "The client did not find the key or certificate on the token (label, ID or URI), so "
        "there was nothing to sign with.",
        "List the token's objects (`pkcs11-tool -O`) and compare label/ID with the client's "
        "PKCS#11 URI or keystore alias; the certificate must have the same CKA_ID as the key.",
    ),
    (
        re.compile(r"unknown ca|bad certificate|certificate (unknown|verify failed|required)|"
                   r"certificate_required", re.IGNORECASE),
        "certificate",
        "The handshake failed on the certificate (chain, trust or a missing client "
        "certificate), not on the token's signature.",
        "Check that the client sends the certificate matching the token key and that the "
        "server trusts its issuer.",
    ),
)


def _key_kind(key_type: str) -> str:
    text = key_type.lower()
    if "ed25519" in text or "ed448" in text or "eddsa" in text or "edwards" in text:
        return "eddsa"
    if "rsa" in text:
        return "rsa"
    if "ec" in text or text.startswith("p") and text[1:].isdigit():
        return "ecdsa"
    return text


def _tls13(version: str) -> bool:
    return "1.3" in version or version.lower().endswith("13")


def _finding(rule: str, summary: str, hint: str) -> dict[str, Any]:
    return {"rule": rule, "summary": summary, "call": None, "hint": hint, "harmless": False}


def explain_without_signing(
    mechanisms: Sequence[str] | None,
    key_type: str,
    tls_version: str,
    client_error: str | None = None,
    server_error: str | None = None,
) -> dict[str, Any]:
    """Findings for a failed handshake with no signing call.

    `mechanisms`: the token's mechanism list (None if unknown); `key_type`:
    "rsa2048", "p256", "ed25519", a CKK_ name or the like; `tls_version`:
    "TLS1.2"/"TLS1.3"/"1.3"; the errors as the client and server reported
    them. Always at least one finding: the general one when nothing specific
    applies.
    """
    kind = _key_kind(key_type)
    offered = set(mechanisms or ())
    findings: list[dict[str, Any]] = []
    if mechanisms is not None:
        if kind == "rsa" and _tls13(tls_version) and not offered & set(RSA_PSS):
            host = " It offers CKM_RSA_X_509, so only clients that pad PSS on the host can " \
                   "work." if offered & set(RSA_HOST_PSS) else ""
            findings.append(_finding(
                "tls13-rsa-without-pss",
                f"TLS 1.3 with the RSA key {key_type}: the token offers no CKM_RSA_PKCS_PSS, and "
                f"TLS 1.3 signs only with RSA-PSS, so the client had no way to sign.{host}",
                "Use an EC key on this token for TLS 1.3, or limit this RSA key to TLS 1.2.",
            ))
        elif kind == "rsa" and not _tls13(tls_version) and not offered & {
            "CKM_RSA_PKCS", *RSA_PSS
        }:
            findings.append(_finding(
                "no-rsa-signing",
                f"The token offers neither CKM_RSA_PKCS nor CKM_RSA_PKCS_PSS for the RSA key "
                f"{key_type}, so no TLS 1.2 client can sign with it.",
                "Check `pkcs11-tool -M`; some tokens hide raw mechanisms and offer only combined "
                "ones (CKM_SHA256_RSA_PKCS), which Java SunPKCS11 can use.",
            ))
        elif kind == "ecdsa" and "CKM_ECDSA" not in offered:
            combined = sorted(m for m in offered if COMBINED_ECDSA.match(m))
            also = f" It offers only {', '.join(combined)}." if combined else ""
            findings.append(_finding(
                "no-raw-ecdsa",
                f"The token offers no raw CKM_ECDSA for the EC key {key_type}.{also} OpenSSL "
                "(libp11, pkcs11-provider) and GnuTLS hash on the host and need CKM_ECDSA, so "
                "they cannot sign.",
                "Use Java SunPKCS11 with the combined mechanisms, or a module that offers "
                "CKM_ECDSA for this token.",
            ))
        elif kind == "eddsa" and "CKM_EDDSA" not in offered:
            findings.append(_finding(
                "no-eddsa",
                f"The token offers no CKM_EDDSA for the key {key_type}.",
                "Use an ECDSA or RSA key on this token.",
            ))
    said = "\n".join(e for e in (client_error, server_error) if e)
    disabled = java_log.disabled_mechanisms(said.splitlines())
    if disabled:
        summary, hint = java_log.disabled_summary(disabled)
        findings.append(_finding("sunpkcs11-disabled", summary, hint))
    for pattern, rule, summary, hint in ERROR_PATTERNS:
        if said and pattern.search(said) and not any(f["rule"] == rule for f in findings):
            findings.append(_finding(rule, summary, hint))
            break
    if not findings:
        findings.append(_finding(
            "no-signing-call",
            f"The handshake ({tls_version}, key {key_type}) failed before the client asked "
            "the token to sign: " + (
                f"the client said {client_error!r}" if client_error else "the client said nothing"
            ) + (f", the server {server_error!r}" if server_error else "") + ".",
            "Look at the client log (it failed before CertificateVerify: connection, "
            "certificate selection or key lookup), and run the client with the interposer's "
            "calls at hand (`p11tls calls`) to see the last PKCS#11 call it made.",
        ))
    return {"findings": findings}
