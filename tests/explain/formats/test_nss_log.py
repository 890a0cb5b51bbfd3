"""NSS's module debug log (NSS_DEBUG_PKCS11_MODULE)."""

from __future__ import annotations

from explain_helpers import DATA, HELDOUT

from harness.explain.explanation import parse_file
from harness.explain.formats.detect import detect_format, read_log
from harness.explain.model import LogFormat


def test_nss_debug_log_parser():
    parsed = parse_file(HELDOUT / "nss-debug-p384-device-error.log")
    assert parsed.format is LogFormat.NSS_DEBUG
    assert detect_format(read_log(HELDOUT / "nss-debug-p384-device-error.log")) is (
        LogFormat.NSS_DEBUG)
    (login,) = [c for c in parsed.calls if c.fn == "C_Login"]
    assert (login.user_type, login.rv) == ("CKU_USER", "CKR_OK") and login.pin_len
    (sign,) = [c for c in parsed.calls if c.fn == "C_Sign"]
    assert (sign.mechanism, sign.input_bytes, sign.curve, sign.rv) == (
        "CKM_ECDSA", 48, "P-384", "CKR_DEVICE_ERROR")
    # control: a log of another format is not read as NSS's
    assert detect_format(read_log(DATA / "seed000-spy.log")) is LogFormat.PKCS11_SPY
