"""p11-kit `log-calls: yes` logs made here."""

from __future__ import annotations

from explain_helpers import WRONG_PIN

from harness.explain.explanation import parse_file
from harness.explain.formats.detect import detect_format, read_log
from harness.explain.model import LogFormat


def test_p11kit_real_calls(p11kit_logs):
    calls = parse_file(p11kit_logs["ecdsa_ok"]).calls
    assert detect_format(read_log(p11kit_logs["ecdsa_ok"])) is LogFormat.P11_KIT
    signing = [(c.fn, c.mechanism, c.input_bytes, c.rv) for c in calls if c.fn.startswith("C_Sign")]
    assert signing == [
        ("C_SignInit", "CKM_ECDSA", None, "CKR_OK"),
        ("C_Sign", "CKM_ECDSA", 32, "CKR_OK"),
    ]
    (init,) = [c for c in parse_file(p11kit_logs["mech_invalid"]).calls if c.fn == "C_SignInit"]
    assert (init.mechanism, init.rv) == ("CKM_ECDSA_SHA256", "CKR_MECHANISM_INVALID")
    logins = [c for c in parse_file(p11kit_logs["wrong_pin"]).calls if c.fn == "C_Login"]
    assert [(c.rv, c.pin_len, c.user_type) for c in logins] == [
        ("CKR_PIN_INCORRECT", len(WRONG_PIN), "CKU_USER")
    ] * 2
    (create,) = [c for c in parse_file(p11kit_logs["import_ok"]).calls if c.fn == "C_CreateObject"]
    assert (create.object_class, create.rv) == ("CKO_PRIVATE_KEY", "CKR_OK")
