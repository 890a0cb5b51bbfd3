"""Pkcs11Interop pkcs11-logger logs."""

from __future__ import annotations

from explain_helpers import DATA

from harness.explain.explanation import parse_file
from harness.explain.model import LogFormat


def test_pkcs11_logger_sample():
    # pkcs11-logger (Pkcs11Interop) is not packaged here: this sample is written by
    # hand in its documented format (pid/tid prefixes, `Calling`/`Returning`,
    # attribute templates with HEX values, the PIN logged because of flag 0x08).
    parsed = parse_file(DATA / "pkcs11-logger-rsa-no-pss.log")
    assert parsed.format is LogFormat.PKCS11_LOGGER
    by_fn = {c.fn: c for c in parsed.calls}
    assert by_fn["C_Login"].pin_len == 6 and by_fn["C_Login"].user_type == "CKU_USER"
    assert by_fn["C_CreateObject"].object_class == "CKO_PRIVATE_KEY"
    assert by_fn["C_CreateObject"].key_type == "CKK_RSA"
    assert "CKM_RSA_PKCS_PSS" not in by_fn["C_GetMechanismList"].mechanisms
    sign_init = by_fn["C_SignInit"]
    assert (sign_init.mechanism, sign_init.rv, sign_init.key_type) == (
        "CKM_RSA_PKCS_PSS",
        "CKR_MECHANISM_INVALID",
        "CKK_RSA",
    )
