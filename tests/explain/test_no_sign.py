"""Failures without a signing call (harness.explain.no_sign): explained from the
token's mechanism list, the key, the TLS version and what client and server said."""

from __future__ import annotations

from harness.explain.no_sign import explain_without_signing

SOFTHSM = ["CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS", "CKM_RSA_X_509", "CKM_ECDSA", "CKM_EDDSA",
           "CKM_ECDSA_SHA256", "CKM_SHA256_RSA_PKCS"]


def rules(**kwargs) -> list[str]:
    return [f["rule"] for f in explain_without_signing(**kwargs)["findings"]]


def test_tls13_rsa_without_pss():
    no_pss = [m for m in SOFTHSM if "PSS" not in m]
    assert rules(mechanisms=no_pss, key_type="rsa2048", tls_version="TLS1.3")[0] == (
        "tls13-rsa-without-pss")
    # Controls: with PSS, or in TLS 1.2, not this cause.
    assert "tls13-rsa-without-pss" not in rules(mechanisms=SOFTHSM, key_type="rsa2048",
                                                 tls_version="TLS1.3")
    assert "tls13-rsa-without-pss" not in rules(mechanisms=no_pss, key_type="rsa2048",
                                                 tls_version="TLS1.2")


def test_no_raw_ecdsa_names_the_combined_mechanisms():
    only_combined = [m for m in SOFTHSM if m != "CKM_ECDSA"]
    (finding, *_) = explain_without_signing(only_combined, "p256", "TLS1.2")["findings"]
    assert finding["rule"] == "no-raw-ecdsa" and "CKM_ECDSA_SHA256" in finding["summary"]
    assert "no-raw-ecdsa" not in rules(mechanisms=SOFTHSM, key_type="p256", tls_version="TLS1.2")


def test_java_disabled_mechanisms_in_the_client_error():
    error = "Mechanism CKM_ECDSA:\n  flags: 8193\nDISABLED in configuration\n"
    assert "sunpkcs11-disabled" in rules(mechanisms=SOFTHSM, key_type="p256",
                                         tls_version="TLS1.3", client_error=error)
    assert "sunpkcs11-disabled" not in rules(mechanisms=SOFTHSM, key_type="p256",
                                             tls_version="TLS1.3", client_error="EOF")


def test_client_error_patterns_and_the_general_fallback():
    assert rules(mechanisms=SOFTHSM, key_type="p256", tls_version="TLS1.3",
                 client_error="could not load private key from pkcs11:object=x") == [
        "key-not-found"]
    general = explain_without_signing(SOFTHSM, "p256", "TLS1.3", "connection reset", None)
    (finding,) = general["findings"]
    assert finding["rule"] == "no-signing-call" and "connection reset" in finding["summary"]
    assert explain_without_signing(None, "p256", "TLS1.3")["findings"]  # never empty


def test_java_no_supported_certificate_verify_algorithm():
    error = "javax.net.ssl.SSLException: No supported CertificateVerify signature algorithm"
    assert "no-signature-algorithm" in rules(mechanisms=None, key_type="rsa2048",
                                             tls_version="TLS1.3", client_error=error)
