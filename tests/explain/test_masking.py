"""No PIN or key value echoed: seeds' logs and logs made here."""

from __future__ import annotations

from explain_helpers import DATA, WRONG_PIN, cli

from harness.explain.formats.detect import read_log
from harness.explain.masking import mask_lines
from harness.explain.model import LogFormat

# --- masking: no PIN bytes or key values in anything echoed -------------------------------


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02X}" for b in data)


def test_seed_pin_and_key_value_are_masked(capsys):
    lines = read_log(DATA / "seed000-spy.log")
    assert any("31 32 33 34 35 36 37 38" in line for line in lines)  # the seed's SO PIN
    masked = "\n".join(mask_lines(lines, LogFormat.PKCS11_SPY))
    assert "31 32 33 34 35 36 37 38" not in masked and "12345678" not in masked
    assert "00 00 00 00 00 00 00 00" not in masked  # the CKA_VALUE dump
    assert "06 08 2A 86 48 CE 3D 03 01 07" in masked  # public EC params stay
    rc, out, _ = cli(capsys, str(DATA / "seed000-spy.log"))
    assert rc == 0 and "CKA_VALUE" in out and "00 00 00 00 00 00 00 00" not in out


def test_real_spy_pin_is_never_echoed(capsys, spy_logs):
    raw = spy_logs["wrong_pin"].read_text()
    wrong_hex = _hex(WRONG_PIN.encode())
    assert wrong_hex in raw and WRONG_PIN in raw  # pkcs11-spy really logs it
    for argv in ([str(spy_logs["wrong_pin"])], [str(spy_logs["wrong_pin"]), "--json"]):
        rc, out, _ = cli(capsys, *argv)
        assert rc == 0 and wrong_hex not in out and WRONG_PIN not in out
    assert "masked" in cli(capsys, str(spy_logs["wrong_pin"]))[1]


def test_real_spy_imported_key_value_is_never_echoed(capsys, spy_logs, import_key):
    _, private_value = import_key
    row = _hex(private_value[:16])
    assert row in spy_logs["import_nologin"].read_text()  # the key really is in the log
    rc, out, _ = cli(capsys, str(spy_logs["import_nologin"]))
    assert rc == 0 and "C_CreateObject" in out and "CKR_USER_NOT_LOGGED_IN" in out
    assert "CKA_VALUE" in out and row not in out and _hex(private_value[16:]) not in out


def test_real_p11kit_pin_is_never_echoed(capsys, p11kit_logs):
    assert f'"{WRONG_PIN}"' in p11kit_logs["wrong_pin"].read_text()
    rc, out, _ = cli(capsys, str(p11kit_logs["wrong_pin"]))
    assert rc == 0 and "pPin = (6)" in out and WRONG_PIN not in out


def test_pkcs11_logger_pin_and_key_values_are_masked():
    lines = read_log(DATA / "pkcs11-logger-rsa-no-pss.log")
    masked = "\n".join(mask_lines(lines, LogFormat.PKCS11_LOGGER))
    for secret in ("246813", "5EC2E75EC2E7", "D1CEB0A7D1CEB0A7"):
        assert secret in "\n".join(lines) and secret not in masked
    assert "HEX(C3A1F00D" in masked  # the modulus is public


def test_opensc_verify_apdu_is_masked():
    # OpenSC 0.23 dumps APDUs on unprefixed lines after the log line
    lines = [
        "P:1; T:0x7f 10:00:00.000 [opensc-pkcs11] reader-pcsc.c:242:pcsc_transmit: reader 'R'",
        "P:1; T:0x7f 10:00:00.000 [opensc-pkcs11] apdu.c:378:sc_single_transmit: ",
        "Outgoing APDU (13 bytes):",
        "00 20 00 81 08 35 38 31 33 32 31 30 39 . ......58132109",
        "P:1; T:0x7f 10:00:00.010 [opensc-pkcs11] apdu.c:378:sc_single_transmit: ",
        "Outgoing APDU (5 bytes):",
        "00 CA 01 01 00 .....",
    ]
    masked = mask_lines(lines, LogFormat.OPENSC_DEBUG)
    assert "58132109" not in "\n".join(masked) and "35 38 31 33" not in "\n".join(masked)
    assert masked[3].startswith("00 20 00 81 08")
    assert masked[6] == lines[6]  # GET DATA carries no secret
