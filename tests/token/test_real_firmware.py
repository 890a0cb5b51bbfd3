"""What a Pico HSM 6.6 through OpenSC 0.23 showed, emulated: a token that
cannot import at all (C_CreateObject -> CKR_FUNCTION_NOT_SUPPORTED, OpenSC's
sc-hsm driver) and a token whose firmware version is not its slot's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MATRIX_TEST = (Path(__file__).parents[1] / "test_matrix.py").read_text()

NO_IMPORT = """name = "no-import"
emulates = "a token without C_CreateObject for keys, firmware 6.6"
[create_object]
refuse = [{ class = "CKO_PRIVATE_KEY", rv = "CKR_FUNCTION_NOT_SUPPORTED" }]
[token]
firmware = "6.6"
"""

REFUSES_EC = """name = "refuses-ec"
emulates = "a token refusing EC imports with a general error"
[create_object]
refuse = [{ class = "CKO_PRIVATE_KEY", key_type = "CKK_EC", rv = "CKR_GENERAL_ERROR" }]
"""


def run(pytester: pytest.Pytester, profile: str):
    pytester.makepyfile(test_matrix=MATRIX_TEST)
    path = pytester.path / "profile.toml"
    path.write_text(profile)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--p11-profile", str(path), "--p11-keys", "p256",
        "--p11-clients", "openssl-engine,software", timeout=300)
    records = json.loads((pytester.path / "reports/results.json").read_text())["cases"]
    return result, {r["case_id"]: r for r in records}


def test_a_token_that_cannot_import_says_so_once_and_skips_its_import_cells(pytester):
    result, cases = run(pytester, NO_IMPORT)
    output = result.stdout.str()
    assert result.ret == 0, output[-3000:]
    assert output.count("p11tls: import not supported by the token") == 1
    for tls in ("tls12", "tls13"):
        imported = cases[f"openssl-engine-p256-import-{tls}"]
        assert imported["outcome"] == "skip" and imported["verdict"] == "skipped"
        assert imported["error"] == ("import not supported by the token "
                                     "(C_CreateObject -> CKR_FUNCTION_NOT_SUPPORTED)")
        creates = [c for c in imported["calls"] if c["fn"] == "C_CreateObject"]
        assert creates and creates[-1]["rv"] == "CKR_FUNCTION_NOT_SUPPORTED"
        assert cases[f"openssl-engine-p256-generate-{tls}"]["outcome"] == "ok"
        assert cases[f"software-p256-import-{tls}"]["outcome"] == "ok"  # the host's copy
    assert "no import" in (pytester.path / "reports/matrix.md").read_text()
    assert "handshake failed" not in output


def test_the_token_firmware_is_the_tokens_not_the_slots(pytester):
    result, cases = run(pytester, NO_IMPORT)
    module = cases["openssl-engine-p256-generate-tls12"]["module"]
    assert module["firmware"] == "6.6"  # CK_TOKEN_INFO.firmwareVersion, emulated
    assert module["slot_firmware"] == "2.6"  # SoftHSM 2.6's slot: what was shown before
    assert "firmware 6.6" in result.stdout.str()


def test_another_refusal_stays_a_failure(pytester):
    """Negative control: a token that refuses one key type with another code
    is not "cannot import": the case fails (an unexpected failure here)."""
    result, cases = run(pytester, REFUSES_EC)
    imported = cases["openssl-engine-p256-import-tls12"]
    assert imported["outcome"] == "fail" and imported["error"] == "provisioning: CKR_GENERAL_ERROR"
    assert "import not supported" not in result.stdout.str()
