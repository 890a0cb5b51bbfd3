"""The harness's own interposer records."""

from __future__ import annotations

from harness.explain.explanation import explain_file, parse_file
from harness.explain.model import LogFormat


def test_real_interposer_records(record_log):
    explanation = explain_file(record_log)
    assert explanation.format is LogFormat.HARNESS
    calls = explanation.calls
    assert calls[explanation.first_failure].rv == "CKR_PIN_INCORRECT"
    (long_sign,) = [c for c in calls if c.fn == "C_Sign" and c.input_bytes == 100]
    # The interposer knows of a key only what the client asked about (it makes
    # no calls of its own): pkcs11-tool signs without reading CKA_EC_PARAMS.
    assert (long_sign.mechanism, long_sign.key_type) == ("CKM_ECDSA", "CKK_EC")
    final = [c for c in calls if c.fn == "C_SignFinal"][-1]
    assert (final.mechanism, final.input_bytes, final.rv) == ("CKM_SHA256_RSA_PKCS", 5000, "CKR_OK")
    (create,) = [c for c in calls if c.fn == "C_CreateObject"]
    assert (create.object_class, create.key_type, create.curve) == (
        "CKO_PRIVATE_KEY",
        "CKK_EC",
        "P-256",
    )
    # pin-flags: SoftHSM2 itself sets CKF_USER_PIN_COUNT_LOW after the wrong PIN
    assert {f.rule for f in explanation.findings} == {
        "pin",
        "pin-flags",
        "mechanism-invalid",
        "ecdsa-input-too-long",
    }



def test_records_tolerate_missing_fields_numbers_and_a_torn_line(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(
        '{"fn": "C_Initialize", "rv": 0}\n'
        '{"fn": "C_SignInit", "rv": "CKR_OK", "session": 3, "mechanism": 4164}\n'
        '{"fn": "C_SignUpdate", "rv": 0, "session": 3, "in_len": 3000, "unknown_field": [1]}\n'
        '{"fn": "C_SignFinal", "rv": 48, "session": 3}\n'
        '{"fn": "C_Sign", "rv": "CKR_O'  # the interposer was killed mid-line
    )
    parsed = parse_file(path)
    assert parsed.format is LogFormat.HARNESS
    assert [(c.fn, c.mechanism, c.input_bytes, c.rv) for c in parsed.calls] == [
        ("C_Initialize", None, None, "CKR_OK"),
        ("C_SignInit", "CKM_ECDSA_SHA256", None, "CKR_OK"),
        ("C_SignUpdate", "CKM_ECDSA_SHA256", 3000, "CKR_OK"),
        ("C_SignFinal", "CKM_ECDSA_SHA256", 3000, "CKR_DEVICE_ERROR"),
    ]



def test_cut_real_records_report_the_torn_line(record_log, tmp_path):
    text = record_log.read_text()
    cut = tmp_path / "cut.jsonl"
    cut.write_text(text[: len(text) // 2])
    explanation = explain_file(cut)
    assert explanation.problems and "torn" in explanation.problems[0]
    assert explain_file(record_log).problems == ()  # control: the whole file is clean
