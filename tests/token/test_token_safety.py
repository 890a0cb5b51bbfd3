"""The token's own PIN flags decide whether the harness logs in at all.

Real tokens: a throw-away SoftHSM2 store (SoftHSM sets CKF_USER_PIN_COUNT_LOW
after a wrong PIN), and the recording interposer's `token_pin_flags`
directive for CKF_USER_PIN_FINAL_TRY / CKF_USER_PIN_LOCKED, which SoftHSM never
sets; its record shows which calls reached the module. Everything that loads
a store runs in a child process (check_login), as conftest.py asks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import TokenError
from harness.interposer import build_interposer, write_interposer_config
from harness.token.probe import check_login
from harness.token.session import pin_state

FINAL_TRY, LOCKED, COUNT_LOW = 0x20000, 0x40000, 0x10000


def logins(record: Path) -> list[dict]:
    calls = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    return [c for c in calls if c.get("fn") == "C_Login"]


def functions(record: Path) -> list[str]:
    return [json.loads(line).get("fn") for line in record.read_text().splitlines()
            if line.strip()]


@pytest.mark.parametrize("flags, refused, warned", [
    (0, None, None),
    (COUNT_LOW, None, "CKF_USER_PIN_COUNT_LOW"),
    (FINAL_TRY, "CKF_USER_PIN_FINAL_TRY", None),
    (FINAL_TRY | COUNT_LOW, "CKF_USER_PIN_FINAL_TRY", None),
    (LOCKED, "CKF_USER_PIN_LOCKED", None),
    (0x40D, None, None),  # RNG, LOGIN_REQUIRED, USER_PIN_INITIALIZED, TOKEN_INITIALIZED
], ids=["none", "count-low", "final-try", "final-try-and-count-low", "locked", "usual-bits"])
def test_pin_state_decides_from_the_flags(flags, refused, warned):
    refusal, warning = pin_state("card", flags)
    assert (refused is None) == (refusal is None)
    assert (warned is None) == (warning is None)
    if refused:
        assert refused in refusal and "no login" in refusal and "\n" not in refusal
    if warned:
        assert warned in warning


def test_softhsm_counts_a_wrong_pin_and_the_check_warns(softhsm_store, monkeypatch):
    store, token = softhsm_store
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    first = check_login(store.module, token.label, token.pin)
    assert first["pin_warning"] is None  # negative control: a fresh token
    with pytest.raises(TokenError, match="refused the PIN"):
        check_login(store.module, token.label, "0000")
    counted = check_login(store.module, token.label, token.pin)
    assert "CKF_USER_PIN_COUNT_LOW" in counted["pin_warning"]
    # the right PIN reset SoftHSM's counter: no warning any more
    assert check_login(store.module, token.label, token.pin)["pin_warning"] is None


@pytest.fixture
def flagged(softhsm_store, tmp_path, monkeypatch):
    """Returns (module, record) for the store's token seen through the
    interposer, reporting `flags` in C_GetTokenInfo."""
    store, token = softhsm_store
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)

    def through_interposer(flags: int) -> tuple[Path, Path]:
        record = tmp_path / f"calls-{flags:x}.jsonl"
        lines = [f"token_pin_flags {flags:#x}"] if flags else []
        env = write_interposer_config(store.module, record, tmp_path / f"{flags:x}.conf", lines)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return build_interposer(), record

    return through_interposer, token


@pytest.mark.parametrize("flags, flag_name", [(FINAL_TRY, "CKF_USER_PIN_FINAL_TRY"),
                                              (LOCKED, "CKF_USER_PIN_LOCKED")],
                         ids=["final-try", "locked"])
def test_no_login_reaches_a_token_that_says_the_pin_is_at_its_end(flagged, flags, flag_name):
    through_interposer, token = flagged
    module, record = through_interposer(flags)
    with pytest.raises(TokenError, match=flag_name) as info:
        check_login(module, token.label, "0000")
    assert "\n" not in str(info.value)
    assert "C_GetTokenInfo" in functions(record)  # the flags were read ...
    assert logins(record) == []  # ... and no C_Login reached the module
    # the right PIN is not sent either: the harness cannot know it is right
    with pytest.raises(TokenError, match=flag_name):
        check_login(module, token.label, token.pin)
    assert logins(record) == []


def test_without_the_flags_the_wrong_pin_is_sent_exactly_once(flagged):
    """Negative control: the same interposer without the directive sees the one login."""
    through_interposer, token = flagged
    module, record = through_interposer(0)
    with pytest.raises(TokenError, match="refused the PIN"):
        check_login(module, token.label, "0000")
    assert [c.get("rv") for c in logins(record)] == ["CKR_PIN_INCORRECT"]


def test_count_low_from_the_interposer_warns_and_logs_in(flagged):
    through_interposer, token = flagged
    module, record = through_interposer(COUNT_LOW)
    info = check_login(module, token.label, token.pin)
    assert "CKF_USER_PIN_COUNT_LOW" in info["pin_warning"]
    assert [c.get("rv") for c in logins(record)] == ["CKR_OK"]


SPY_LOGIN = (
    "7: C_Login\n"
    "2026-11-30 06:51:37.112\n"
    "[in] hSession = 0x1\n"
    "[in] userType = CKU_USER\n"
    "[in] pPin[ulPinLen] 00007ffcadaf1a52 / 6\n"
    "    00000000  71 57 2d 39 38 37                                qW-987          \n"
    "Returned:  0 CKR_OK\n"
)


def test_raw_spy_log_is_masked_in_place_keeping_every_offset(tmp_path):
    from harness.run.recording import scrub_spy_log

    log = tmp_path / "spy.log"
    head = b"1: C_GetInfo\nReturned:  0 CKR_OK\n"
    log.write_bytes(head + SPY_LOGIN.encode())
    scrub_spy_log(log, len(head))
    after = log.read_bytes()
    assert len(after) == len(head) + len(SPY_LOGIN.encode())
    assert after.startswith(head) and b"/ 6\n" in after and b"Returned:  0 CKR_OK" in after
    assert b"qW-987" not in after and b"71 57 2d" not in after
    # control: before the offset nothing is touched, even a PIN
    log.write_bytes(SPY_LOGIN.encode() + head)
    scrub_spy_log(log, len(SPY_LOGIN))
    assert b"qW-987" in log.read_bytes()


def test_registered_pin_is_masked_in_every_form():
    import base64

    from harness.explain import masking as pin_masking

    pin = "Lm4-reg-771"
    text = f"{pin} {pin.encode().hex()} {base64.b64encode(pin.encode()).decode()} keep"
    assert pin_masking.mask_text(text, frozenset()) == text  # control: unknown, untouched
    masked = pin_masking.mask_text(text, frozenset({pin}))
    assert pin not in masked and pin.encode().hex() not in masked and masked.endswith(" keep")
    assert len(masked) == len(text)


def test_objects_holding_a_pin_do_not_show_it_in_their_repr(tmp_path):
    from harness.clients.base import HandshakeJob
    from harness.tls.version import TLSVersion
    from harness.token.softhsm import SoftHSMToken

    job = HandshakeJob(host="127.0.0.1", port=1, tls=TLSVersion("1.2"), module=tmp_path,
                       token_label="t", pin="Ab3-repr-55", key_label="k", key_id_hex="01",
                       cert_pem=tmp_path, ca_pem=tmp_path, log_path=tmp_path)
    assert job.pin == "Ab3-repr-55" and "Ab3-repr-55" not in repr(job)
    assert "Ab3-repr-55" not in repr(SoftHSMToken("t", "Ab3-repr-55"))
