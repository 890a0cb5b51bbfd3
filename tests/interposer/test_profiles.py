"""Emulated-token profiles (issue 5): the shipped ones, the TOML format, its
validation, the interposer lines and `p11tls profiles`. Nothing here loads a
PKCS#11 module; tests/interposer/test_emulation.py runs the lines through the interposer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.commands.profiles import profiles_main
from harness.errors import ConfigError
from harness.interposer import write_interposer_config
from harness.interposer.profile import (
    PROFILES_DIR,
    FailAfter,
    Profile,
    RefuseRule,
    load_profile,
    shipped_profiles,
)

SHIPPED = ["combined-pss-only", "nitrokey-hsm-opensc", "nitrokey-start-opensc", "openpgp-card",
           "picohsm-opensc", "slow-card"]

# The example of issue 5, whole.
ISSUE_EXAMPLE = '''
name = "picohsm-opensc"
emulates = "Pico HSM through OpenSC's sc-hsm driver"
source = "public report the behaviour comes from"

[mechanisms]
hide = []
add_combined = ["CKM_ECDSA_SHA1", "CKM_ECDSA_SHA224", "CKM_ECDSA_SHA256",
                "CKM_ECDSA_SHA384", "CKM_ECDSA_SHA512"]

[sign]
max_input_bytes = 2048
limit_mechanisms = ["CKM_ECDSA_SHA1", "CKM_ECDSA_SHA224", "CKM_ECDSA_SHA256"]
over_limit_rv = "CKR_GENERAL_ERROR"
multipart = true

[create_object]
refuse = [{ class = "CKO_PRIVATE_KEY", key_type = "CKK_EC", rv = "CKR_GENERAL_ERROR" }]

[pin]
max_tries = 3

[faults]
latency_ms = { C_Sign = 150, C_SignFinal = 150 }
fail_after = { function = "C_Sign", calls = 20, rv = "CKR_DEVICE_REMOVED" }
'''


def write(tmp_path: Path, text: str, name: str = "mine") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------- shipped


def test_every_shipped_profile_loads_and_says_what_it_emulates() -> None:
    profiles = shipped_profiles()
    assert [p.name for p in profiles] == SHIPPED
    for p in profiles:
        assert p.path == PROFILES_DIR / f"{p.name}.toml"
        assert load_profile(p.name) == p
        assert p.emulates and p.source and p.interposer_lines()
        assert p.label == f"emulation of {p.emulates} (profile {p.name})"
        # The source describes a report; it names no web host.
        assert not re.search(r"https?://|www\.|\.(com|org|io|net)\b", p.source), p.source


def test_shipped_profiles_do_what_issue_5_says() -> None:
    pico = load_profile("picohsm-opensc")
    assert pico.mechanisms.add_combined == ("CKM_ECDSA_SHA1", "CKM_ECDSA_SHA224",
                                            "CKM_ECDSA_SHA256", "CKM_ECDSA_SHA384",
                                            "CKM_ECDSA_SHA512")
    assert (pico.sign.max_input_bytes, pico.sign.limit_mechanisms, pico.sign.over_limit_rv) == (
        2029, ("CKM_ECDSA_SHA1", "CKM_ECDSA_SHA224", "CKM_ECDSA_SHA256"), "CKR_GENERAL_ERROR")
    assert "#123" in pico.source and "6039" in pico.source

    nitrokey = load_profile("nitrokey-start-opensc")
    assert nitrokey.create_object.refuse == (RefuseRule("CKO_PRIVATE_KEY", "CKK_EC",
                                                        "CKR_GENERAL_ERROR"),)
    assert nitrokey.interposer_lines() == [
        "refuse_create 0x3 0x3 0x5 # CKO_PRIVATE_KEY CKK_EC CKR_GENERAL_ERROR"]

    openpgp = load_profile("openpgp-card")
    assert set(openpgp.mechanisms.hide) == {
        "CKM_RSA_PKCS_PSS", "CKM_SHA1_RSA_PKCS_PSS", "CKM_SHA224_RSA_PKCS_PSS",
        "CKM_SHA256_RSA_PKCS_PSS", "CKM_SHA384_RSA_PKCS_PSS", "CKM_SHA512_RSA_PKCS_PSS",
        "CKM_RSA_X_509"}
    assert "1936" in openpgp.source and "628" in openpgp.source

    slow = load_profile("slow-card")
    assert dict(slow.faults.latency_ms) == {"C_Sign": 150, "C_SignFinal": 150}
    assert slow.interposer_lines() == ["latency C_Sign 150", "latency C_SignFinal 150"]


# -------------------------------------------------------------- format


def test_the_issue_example_loads_with_every_section(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, ISSUE_EXAMPLE))
    assert p.pin.max_tries == 3 and p.sign.multipart is True
    assert p.faults.fail_after == (FailAfter("C_Sign", 20, "CKR_DEVICE_REMOVED"),)
    assert p.interposer_lines() == [
        "add_combined 0x1042 # CKM_ECDSA_SHA1",
        "add_combined 0x1043 # CKM_ECDSA_SHA224",
        "add_combined 0x1044 # CKM_ECDSA_SHA256",
        "add_combined 0x1045 # CKM_ECDSA_SHA384",
        "add_combined 0x1046 # CKM_ECDSA_SHA512",
        "sign_max_input 2048",
        "sign_limit_mechanism 0x1042 # CKM_ECDSA_SHA1",
        "sign_limit_mechanism 0x1043 # CKM_ECDSA_SHA224",
        "sign_limit_mechanism 0x1044 # CKM_ECDSA_SHA256",
        "sign_over_limit_rv 0x5 # CKR_GENERAL_ERROR",
        "refuse_create 0x3 0x3 0x5 # CKO_PRIVATE_KEY CKK_EC CKR_GENERAL_ERROR",
        "pin_max_tries 3",
        "latency C_Sign 150",
        "latency C_SignFinal 150",
        "fail_after C_Sign 20 0x32 # CKR_DEVICE_REMOVED",
    ]
    # The lines are what write_interposer_config takes.
    real = write(tmp_path, "", "libreal.so")
    write_interposer_config(real, tmp_path / "r.jsonl", tmp_path / "c.conf", p.interposer_lines())
    assert (tmp_path / "c.conf").read_text().splitlines()[3:] == p.interposer_lines()


def test_everything_is_optional(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, "", "bare"))
    assert (p.name, p.emulates, p.source) == ("bare", "", "")
    assert p.interposer_lines() == []
    assert p.label == "emulation of an unnamed token (profile bare)"
    assert p.describe() == ["behaves like the real token (nothing emulated)"]


def test_defaults_and_other_shapes(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, '''
[sign]
max_input_bytes = 0
multipart = false
[create_object]
refuse = [{ class = "CKO_PRIVATE_KEY" }]
[[faults.fail_after]]
function = "C_Sign"
calls = 0
[[faults.fail_after]]
function = "C_Login"
calls = 2
rv = "CKR_TOKEN_NOT_PRESENT"
'''))
    assert p.sign.limit_mechanisms is None and p.sign.over_limit_rv == "CKR_GENERAL_ERROR"
    assert p.create_object.refuse == (RefuseRule("CKO_PRIVATE_KEY", None, "CKR_GENERAL_ERROR"),)
    assert p.interposer_lines() == [
        "sign_max_input 0", "sign_over_limit_rv 0x5 # CKR_GENERAL_ERROR", "sign_multipart no",
        "refuse_create 0x3 any 0x5 # CKO_PRIVATE_KEY any CKR_GENERAL_ERROR",
        "fail_after C_Sign 0 0x32 # CKR_DEVICE_REMOVED",
        "fail_after C_Login 2 0xe0 # CKR_TOKEN_NOT_PRESENT"]


def test_a_token_that_stops_answering(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, '[faults]\nhang_after = { function = "C_SignFinal", '
                                     'calls = 3 }\n'))
    assert p.faults.hang_after == (("C_SignFinal", 3),)
    assert p.interposer_lines() == ["hang_after C_SignFinal 3"]
    assert p.describe() == ["never returns from C_SignFinal after 3 successful calls"]


def test_profiles_are_values(tmp_path: Path) -> None:
    a = load_profile(write(tmp_path, ISSUE_EXAMPLE, "a"))
    b = load_profile(write(tmp_path, ISSUE_EXAMPLE, "a"))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.faults.latency_ms["C_Sign"] = 1  # type: ignore[index]


# ---------------------------------------------------------- validation

BAD = {
    "unknown-top-key": ('emulate = "x"\n', "emulate: unknown key (did you mean emulates?)",
                        "name, emulates, source, mechanisms, sign"),
    "unknown-section": ("[signing]\n", "signing: unknown key (did you mean sign?)",
                        "create_object, pin, faults"),
    "unknown-key": ("[sign]\nmax_input = 5\n", "sign.max_input: unknown key",
                    "max_input_bytes, limit_mechanisms, over_limit_rv, multipart"),
    "unknown-mechanism": ('[mechanisms]\nhide = ["CKM_ECDSA_SHA265"]\n',
                          ("mechanisms.hide[0]: unknown mechanism 'CKM_ECDSA_SHA265' "
                          "(did you mean CKM_ECDSA_SHA256?)"), "CKM_ECDSA_SHA256"),
    "unknown-rv": ('[sign]\nmax_input_bytes = 1\nover_limit_rv = "CKR_GENERIC_ERROR"\n',
                   "sign.over_limit_rv: unknown return code 'CKR_GENERIC_ERROR'",
                   "CKR_GENERAL_ERROR"),
    "unknown-class": ('[create_object]\nrefuse = [{ class = "CKO_PRIVATE" }]\n',
                      "create_object.refuse[0].class: unknown object class 'CKO_PRIVATE'",
                      ("CKO_CERTIFICATE, CKO_DATA, CKO_DOMAIN_PARAMETERS, CKO_HW_FEATURE, "
                       "CKO_MECHANISM, CKO_OTP_KEY, CKO_PRIVATE_KEY, CKO_PROFILE, "
                       "CKO_PUBLIC_KEY, CKO_SECRET_KEY")),
    "unknown-key-type": (('[create_object]\nrefuse = [{ class = "CKO_PRIVATE_KEY", '
                         'key_type = "CKK_ECDSA" }]\n'),
                         "create_object.refuse[0].key_type: unknown key type 'CKK_ECDSA'",
                         "CKK_EC, CKK_EC_EDWARDS"),
    "unknown-function": ("[faults]\nlatency_ms = { C_Signe = 5 }\n",
                         ("faults.latency_ms.C_Signe: unknown PKCS#11 function 'C_Signe' "
                         "(did you mean C_Sign?)"), "C_Sign"),
    "wrong-type-int": ('[sign]\nmax_input_bytes = "2048"\n',
                       ("sign.max_input_bytes: expected an integer from 0 to 4294967295, "
                       "got string '2048'"), "an integer from 0 to 4294967295"),
    "bool-is-not-int": ("[pin]\nmax_tries = true\n", "pin.max_tries: expected an integer",
                        "an integer from 1 to 255"),
    "wrong-type-bool": ('[sign]\nmultipart = "no"\n', "sign.multipart: expected true or false",
                        "true or false"),
    "wrong-type-list": ('[mechanisms]\nhide = "CKM_RSA_PKCS_PSS"\n',
                        "mechanisms.hide: expected a list of names, got string",
                        "a list of names"),
    "wrong-type-section": ("sign = 5\n", "sign: expected a table, got integer 5",
                           "a table with the keys max_input_bytes"),
    "out-of-range": ("[pin]\nmax_tries = 0\n", "pin.max_tries: 0 is out of range",
                     "an integer from 1 to 255"),
    "not-combinable": ('[mechanisms]\nadd_combined = ["CKM_SHA256_RSA_PKCS"]\n',
                       "mechanisms.add_combined[0]: 'CKM_SHA256_RSA_PKCS' cannot be added",
                       ("CKM_ECDSA_SHA1, CKM_ECDSA_SHA224, CKM_ECDSA_SHA256, CKM_ECDSA_SHA384, "
                       "CKM_ECDSA_SHA512")),
    "hidden-and-added": (('[mechanisms]\nhide = ["CKM_ECDSA_SHA256"]\n'
                         'add_combined = ["CKM_ECDSA_SHA256"]\n'),
                         "mechanisms.add_combined: CKM_ECDSA_SHA256 is also hidden",
                         "either hidden or added"),
    "ok-is-not-a-failure": (('[faults]\nfail_after = { function = "C_Sign", calls = 1, '
                            'rv = "CKR_OK" }\n'), "faults.fail_after.rv: CKR_OK is not a failure",
                            "a CKR_ error code"),
    "limit-without-max": ('[sign]\nlimit_mechanisms = ["CKM_ECDSA"]\n',
                          "sign.limit_mechanisms: given without sign.max_input_bytes",
                          "only together with max_input_bytes"),
    "empty-limit-list": ("[sign]\nmax_input_bytes = 5\nlimit_mechanisms = []\n",
                         "sign.limit_mechanisms: empty list",
                         "leave the key out to limit every mechanism"),
    "fail-after-twice": (('[faults]\nfail_after = [{ function = "C_Sign", calls = 1 }, '
                         '{ function = "C_Sign", calls = 2 }]\n'),
                         "faults.fail_after[1].function: C_Sign has a fail_after already",
                         "one fail_after per function"),
    "fail-after-no-calls": ('[faults]\nfail_after = { function = "C_Sign" }\n',
                            "faults.fail_after: no calls", "a table {function, calls, rv}"),
    "hang-after-no-calls": ('[faults]\nhang_after = { function = "C_SignFinal" }\n',
                            "faults.hang_after: no calls", "a table {function, calls}"),
    "hang-after-bad-function": ('[faults]\nhang_after = { function = "C_Hang", calls = 1 }\n',
                                "faults.hang_after.function", "PKCS#11 2.40 functions"),
    "bad-name": ('name = "my profile"\n', "name: 'my profile' is not a plain name",
                 "letters, digits"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_profiles_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    text, problem, allowed = BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"emulation profile {path}: ")
    assert problem in message
    assert allowed in message.split("; allowed: ", 1)[1]


def test_unreadable_files_and_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 1"):
        load_profile(write(tmp_path, "[sign\n"))
    with pytest.raises(ConfigError, match=r"cannot read emulation profile .*nope\.toml"):
        load_profile(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"no shipped emulation profile 'picohsm' \(shipped: "
                                          r"combined-pss-only, nitrokey-hsm-opensc, "
                                          r"nitrokey-start-opensc, openpgp-card, picohsm-opensc, "
                                          r"slow-card\); give a path"):
        load_profile("picohsm")
    # A path is a path even when a shipped profile has the same stem.
    mine = write(tmp_path, 'emulates = "my own card"\n', "slow-card")
    assert load_profile(mine).emulates == "my own card"
    assert load_profile(str(mine)).emulates == "my own card"
    assert load_profile("slow-card").emulates != "my own card"


# ----------------------------------------------------------------- CLI


def test_profiles_lists_the_shipped_ones_as_emulations(capsys: pytest.CaptureFixture[str]) -> None:
    assert profiles_main([]) == 0
    out = capsys.readouterr().out
    assert "(each is an emulation on the module under test, not the device)" in out
    for p in shipped_profiles():
        assert f"  {p.name}" in out and f"emulates {p.emulates}" in out
        assert f"source: {p.source}" in out


def test_profiles_shows_one_and_checks_a_users_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert profiles_main(["picohsm-opensc"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("picohsm-opensc: an emulation, not the device\n")
    assert "fails a signing operation past 2029 input bytes with CKR_GENERAL_ERROR" in out
    assert "    sign_max_input 2029\n" in out
    bad = write(tmp_path, "[pin]\nmax_tries = 'three'\n")
    assert profiles_main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"p11tls profiles: emulation profile {bad}: pin.max_tries: ")
    assert err.count("\n") == 1
    assert profiles_main(["--help"]) == 0


def test_profile_type_is_exported() -> None:
    assert Profile.__dataclass_params__.frozen  # type: ignore[attr-defined]
