"""tpm2-pkcs11's own log (TPM2_PKCS11_LOG_LEVEL), made here on swtpm."""

from __future__ import annotations

from harness.explain.explanation import explain_file, parse_file
from harness.explain.model import LogFormat


def test_tpm2_log_parser_reads_calls_return_codes_and_module_errors(tpm2_logs):
    parsed = parse_file(tpm2_logs["import"])
    assert parsed.format is LogFormat.TPM2_PKCS11
    (create,) = [c for c in parsed.calls if c.fn == "C_CreateObject"]
    assert (create.rv, create.object_class, create.key_type) == (
        "CKR_ATTRIBUTE_VALUE_INVALID", "CKO_PRIVATE_KEY", "CKK_EC")
    assert "Can only create" in create.detail
    logins = [c for c in parse_file(tpm2_logs["lockout"]).calls if c.fn == "C_Login"]
    assert [c.rv for c in logins] == ["CKR_PIN_INCORRECT"] * 3 + ["CKR_PIN_LOCKED"] * 2
    assert "DA lockout" in logins[3].detail
    # control: the successful PSS signature has no failure and no finding
    ok = explain_file(tpm2_logs["pss_ok"])
    assert ok.first_failure is None and ok.findings == ()
    assert any(c.fn == "C_SignInit" and c.mechanism == "CKM_RSA_PKCS_PSS" for c in ok.calls)


def test_tpm2_level_0_log_still_names_the_call(tpm2_logs, tmp_path):
    """TPM2_PKCS11_LOG_LEVEL=0 writes only ERROR lines: the call is inferred from the
    message, its return code from pkcs11-tool's own line."""
    lines = tpm2_logs["import"].read_text().splitlines()
    quiet = tmp_path / "level0.log"
    quiet.write_text("\n".join(line for line in lines if not line.startswith("INFO")) + "\n")
    explanation = explain_file(quiet)
    first = explanation.calls[explanation.first_failure]
    assert (first.fn, first.rv, first.inferred) == (
        "C_CreateObject", "CKR_ATTRIBUTE_VALUE_INVALID", True)
    assert explanation.findings[0].rule == "tpm2-import"
