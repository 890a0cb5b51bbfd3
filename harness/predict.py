"""What the token offers predicts what each TLS client will ask of it.

Rules over the token's mechanism list (as `p11tls doctor` reads it): which
mechanism a client asks for in TLS 1.2/1.3 with each key type, about how many
bytes, and whether it can work. The rules restate what the matrix measured
(harness/data/expected_mechanisms.toml, the profiles' outcome files); a
per-cell prediction checked against the matrix is still to come.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Note:
    """One prediction from what the token offers (or lacks)."""

    when: str  # the token's fact: "advertises CKM_ECDSA_SHA256"
    then: str  # what the clients will do

    def __str__(self) -> str:
        return f"{self.when}: {self.then}"


def notes(mechanisms: set[str]) -> list[Note]:
    """The predictions that follow from the token's mechanism names (CKM_…)."""
    have = {m.removeprefix("CKM_") for m in mechanisms}
    found: list[Note] = []
    combined_ec = sorted(m for m in have if m.startswith("ECDSA_SHA"))
    if combined_ec:
        found.append(Note(
            f"advertises {', '.join('CKM_' + m for m in combined_ec)}",
            "Java 17+ (SunPKCS11) and pkcs11-provider send the whole TLS 1.2 transcript "
            "(~1.5-3 KB) through C_SignUpdate; a card with a small input buffer fails there "
            "(java-nocombined, OpenSSL engine and GnuTLS hash on the host and sign 32-64 B)"))
    if "ECDSA" not in have and combined_ec:
        found.append(Note("no raw CKM_ECDSA", "OpenSSL (engine) and GnuTLS cannot sign with "
                          "EC keys: they hash on the host and need CKM_ECDSA"))
    if "RSA_PKCS_PSS" not in have:
        found.append(Note(
            "no CKM_RSA_PKCS_PSS",
            "TLS 1.3 with RSA keys fails for every client (TLS 1.3 allows only RSA-PSS); in "
            "TLS 1.2 GnuTLS and Java fall back to PKCS#1 v1.5 (CKM_RSA_PKCS, 51 B), while the "
            "libp11 engine falls back to CKM_RSA_X_509"
            + (" (offered here)" if "RSA_X_509" in have else ", which is not offered either")))
    combined_rsa = sorted(m for m in have if m.startswith("SHA") and m.endswith("_RSA_PKCS"))
    if combined_rsa:
        found.append(Note(
            f"advertises {', '.join('CKM_' + m for m in combined_rsa)}",
            "Java picks the combined mechanism when the server forces rsa_pkcs1_sha256 in "
            "TLS 1.2 and streams the transcript (~2.3 KB) through C_SignUpdate"))
    if "EDDSA" not in have:
        found.append(Note("no CKM_EDDSA", "Ed25519 keys are skipped (no client can sign)"))
    return found
