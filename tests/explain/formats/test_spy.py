"""OpenSC pkcs11-spy logs: seed 000's excerpt and logs made here with pkcs11-tool."""

from __future__ import annotations

from explain_helpers import DATA, WRONG_PIN

from harness.explain.explanation import explain_file, parse_file
from harness.explain.model import LogFormat

# --- parsers: seed excerpts -----------------------------------------------------------


def test_seed000_spy_login_and_refused_import():
    parsed = parse_file(DATA / "seed000-spy.log")
    assert parsed.format is LogFormat.PKCS11_SPY
    login, create = (c for c in parsed.calls if c.fn in ("C_Login", "C_CreateObject"))
    assert (login.user_type, login.pin_len, login.rv) == ("CKU_SO", 8, "CKR_OK")
    assert create.rv == "CKR_GENERAL_ERROR"
    assert (create.object_class, create.key_type, create.curve) == (
        "CKO_PRIVATE_KEY",
        "CKK_EC",
        "P-256",
    )
    assert "CKA_VALUE" in create.template
    explanation = explain_file(DATA / "seed000-spy.log")
    assert explanation.calls[explanation.first_failure].fn == "C_CreateObject"



# --- parsers: logs made for real --------------------------------------------------------


def test_spy_real_sign_calls(spy_logs):
    ecdsa = [c for c in parse_file(spy_logs["ecdsa_ok"]).calls if c.fn in ("C_SignInit", "C_Sign")]
    assert [(c.fn, c.mechanism, c.input_bytes, c.rv) for c in ecdsa] == [
        ("C_SignInit", "CKM_ECDSA", None, "CKR_OK"),
        ("C_Sign", "CKM_ECDSA", 32, "CKR_OK"),
    ]
    multipart = [c for c in parse_file(spy_logs["multipart_ok"]).calls if c.fn.startswith("C_Sign")]
    assert multipart[0].mechanism == "CKM_SHA256_RSA_PKCS"
    updates = [c for c in multipart if c.fn == "C_SignUpdate"]
    assert sum(c.input_bytes for c in updates) == 5000
    assert all(c.mechanism == "CKM_SHA256_RSA_PKCS" for c in updates)
    final = multipart[-1]
    assert (final.fn, final.input_bytes, final.rv) == ("C_SignFinal", 5000, "CKR_OK")


def test_spy_real_failures(spy_logs):
    # pkcs11-spy 0.23 has no name for CKM_ECDSA_SHA256 and prints 0x00001044
    (init,) = [c for c in parse_file(spy_logs["mech_invalid"]).calls if c.fn == "C_SignInit"]
    assert (init.mechanism, init.rv) == ("CKM_ECDSA_SHA256", "CKR_MECHANISM_INVALID")
    logins = [c for c in parse_file(spy_logs["wrong_pin"]).calls if c.fn == "C_Login"]
    assert [(c.rv, c.pin_len) for c in logins] == [("CKR_PIN_INCORRECT", len(WRONG_PIN))] * 2


def test_spy_real_import_and_keygen(spy_logs):
    (create,) = [c for c in parse_file(spy_logs["import_ok"]).calls if c.fn == "C_CreateObject"]
    assert (create.object_class, create.key_type, create.curve, create.rv) == (
        "CKO_PRIVATE_KEY",
        "CKK_EC",
        "P-256",
        "CKR_OK",
    )
    listed = [c.mechanisms for c in parse_file(spy_logs["keygen_mechanisms"]).calls if c.mechanisms]
    assert listed and {"CKM_ECDSA", "CKM_RSA_PKCS_PSS"} <= set(listed[0])



def test_old_pkcs11_spy_spelling():
    parsed = parse_file(DATA / "spy-opensc-0.20-multipart.log")
    assert parsed.format is LogFormat.PKCS11_SPY
    update = next(c for c in parsed.calls if c.fn == "C_SignUpdate")
    assert (update.mechanism, update.input_bytes, update.rv) == (
        "CKM_ECDSA", 1024, "CKR_MECHANISM_INVALID")
