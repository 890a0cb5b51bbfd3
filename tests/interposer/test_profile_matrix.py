"""The matrix under each shipped emulation profile, as CI runs it: the
expected outcomes of harness/data/outcomes/PROFILE.toml (passes and strict
expected failures), the seeds' failures reproduced, and every result labelled
as an emulation. The plain matrix (test_matrix.py) is the negative control:
the same cases all pass without a profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MATRIX_TEST = (Path(__file__).parents[1] / "test_matrix.py").read_text()


def run_profile(pytester: pytest.Pytester, profile: str, *args: str):
    pytester.makepyfile(test_matrix=MATRIX_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--p11-profile", profile,
                                           *args, timeout=300)
    records = json.loads((pytester.path / "reports/results.json").read_text())["cases"]
    return result, {r["case_id"]: r for r in records}


def test_picohsm_reproduces_seed_001_and_its_workaround(pytester):
    result, cases = run_profile(pytester, "picohsm-opensc", "--p11-keys", "p256,p384",
                                "--p11-clients", "java,java-nocombined,openssl-engine,gnutls")
    assert result.ret == 0, result.stdout.str()[-3000:]
    # the header line, fitted to 80 columns: the profile's name may be on the next line
    result.stdout.fnmatch_lines(["p11tls profile: emulation of Pico HSM*",
                                 "*(profile picohsm-opensc)*"])
    failed = cases["java-p256-generate-tls12"]
    assert failed["outcome"] == "fail" and "CKR_GENERAL_ERROR" in failed["error"]
    assert failed["sign"]["mechanism"] == "CKM_ECDSA_SHA256"
    assert failed["sign"]["input_bytes"] > 2029 and failed["sign"]["parts"] >= 1
    tls13 = cases["java-p256-generate-tls13"]
    assert tls13["outcome"] == "ok" and 100 < tls13["sign"]["input_bytes"] < 200
    for tls in ("tls12", "tls13"):
        p384 = cases[f"java-p384-generate-{tls}"]
        assert p384["outcome"] == "ok" and p384["sign"]["mechanism"] == "CKM_ECDSA_SHA384"
        for client in ("java-nocombined", "openssl-engine", "gnutls"):
            assert cases[f"{client}-p256-generate-{tls}"]["outcome"] == "ok"
            assert cases[f"{client}-p256-generate-{tls}"]["sign"]["mechanism"] == "CKM_ECDSA"
    for record in cases.values():
        assert record["profile"] == "picohsm-opensc"
        assert "Pico HSM" in record["module"]["emulates"]
        assert record["module"]["path"].endswith("libsofthsm2.so")  # the real module
    # one verdict everywhere: pytest's, with the reason of the expected failure
    seed = {f"java-p256-{p}-tls12" for p in ("generate", "import")}
    assert {k for k, r in cases.items() if r["verdict"] == "xfailed"} == seed
    assert all(cases[k]["expected"].startswith("seed 001") for k in seed)
    assert {r["verdict"] for k, r in cases.items() if k not in seed} == {"passed"}
    assert all(r["problems"] == [] and r["unmeasured"] == [] for r in cases.values())
    passed = sum(r["verdict"] == "passed" for r in cases.values())
    result.assert_outcomes(passed=passed, xfailed=2)
    result.stdout.fnmatch_lines([f"{passed} passed, 0 failed, 2 xfailed, 0 skipped"])


def test_nitrokey_refuses_ec_import_but_generates(pytester):
    result, cases = run_profile(pytester, "nitrokey-start-opensc", "--p11-keys", "p256,rsa2048",
                                "--p11-clients", "openssl-engine,gnutls")
    assert result.ret == 0, result.stdout.str()[-3000:]
    for client in ("openssl-engine", "gnutls"):
        for tls in ("tls12", "tls13"):
            imported = cases[f"{client}-p256-import-{tls}"]
            assert imported["outcome"] == "fail"
            assert imported["error"] == "provisioning: CKR_GENERAL_ERROR"
            assert cases[f"{client}-p256-generate-{tls}"]["outcome"] == "ok"
            assert cases[f"{client}-rsa2048-import-{tls}"]["outcome"] == "ok"  # RSA import works
            assert imported["verdict"] == "xfailed" and "seed 000" in imported["expected"]


def test_openpgp_card_fails_rsa_in_tls13(pytester):
    result, cases = run_profile(pytester, "openpgp-card", "--p11-keys", "rsa2048",
                                "--p11-clients", "openssl-engine,gnutls,java")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert cases["gnutls-rsa2048-generate-tls12"]["sign"]["mechanism"] == "CKM_RSA_PKCS"
    assert cases["gnutls-rsa2048-generate-tls13"]["outcome"] == "fail"
    assert cases["java-rsa2048-generate-tls12"]["outcome"] == "ok"
    assert cases["java-rsa2048-generate-tls13"]["outcome"] == "fail"
    engine = cases["openssl-engine-rsa2048-generate-tls12"]
    assert engine["outcome"] == "fail" and engine["sign"]["mechanism"] == "CKM_RSA_X_509"


def test_slow_card_adds_its_latency_to_each_signature(pytester):
    result, cases = run_profile(pytester, "slow-card", "--p11-keys", "p256",
                                "--p11-clients", "openssl-engine", "-k", "generate")
    assert result.ret == 0, result.stdout.str()[-3000:]
    for record in cases.values():
        signs = [c for c in record["calls"] if c["fn"] == "C_Sign" and c.get("out_buf")]
        assert signs and all(c["us"] >= 150_000 for c in signs)


@pytest.mark.parametrize("profile, message", [
    ("no-such-card", "*no shipped emulation profile 'no-such-card'*"),
    ("broken.toml", "*cannot read emulation profile*broken.toml*"),
], ids=["unknown-name", "missing-file"])
def test_bad_profile_is_a_one_line_usage_error(pytester, profile, message):
    pytester.makepyfile(test_matrix=MATRIX_TEST)
    result = pytester.runpytest_subprocess("--p11-profile", profile, timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_key_type_the_token_cannot_sign_with_is_skipped_with_the_reason(pytester, tmp_path):
    own = tmp_path / "no-eddsa.toml"
    own.write_text('name = "no-eddsa"\nemulates = "a token without EdDSA"\nsource = "test"\n'
                   '[mechanisms]\nhide = ["CKM_EDDSA"]\n')
    result, cases = run_profile(pytester, str(own), "--p11-keys", "ed25519",
                                "--p11-clients", "gnutls")
    result.assert_outcomes(skipped=4)
    assert {r["error"] for r in cases.values()} == {
        "token 'p11tls-eddsa' does not offer CKM_EDDSA"}
    # negative control: the same cases without the profile run (gnutls signs Ed25519)
    plain = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--p11-keys", "ed25519",
                                          "--p11-clients", "gnutls", timeout=300)
    plain.assert_outcomes(passed=4)
