"""`p11tls token-sweep`: C_Sign with each combined mechanism, bisecting the input limit.

The sweeps run `p11tls token-sweep` in a child process (one PKCS#11 module per
process: this pytest process may hold SoftHSM2 through python-pkcs11 already),
on a throw-away SoftHSM2 token, through the interposer under each profile.
The limits asserted are the profiles' own numbers, read from their files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.commands.token_sweep import (
    MechanismLimit,
    bisect_limit,
    combined_mechanisms,
)
from harness.interposer.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]


def token_sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "token-sweep", "--p11-reports",
         str(tmp_path / "reports"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def swept(tmp_path: Path, *args: str) -> dict[str, dict[str, Any]]:
    proc = token_sweep(tmp_path, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return {r["mechanism"]: r for r in json.loads(proc.stdout)}


# --- the bisection itself, on a function with a known limit ------------------------------


@pytest.mark.parametrize("limit", [1, 2, 1222, 2029, 4096, 65535])
def test_bisection_finds_an_exact_limit(limit: int) -> None:
    found = bisect_limit(lambda n: None if n <= limit else "CKR_DATA_LEN_RANGE",
                         "CKM_ECDSA_SHA256", "p256", 65536)
    assert (found.largest_ok, found.smallest_refused, found.refused_rv) == (
        limit, limit + 1, "CKR_DATA_LEN_RANGE")
    assert found.tries is not None and len(found.tries) <= 2 * 17  # doubling, then halving


def test_bisection_without_a_limit_and_refusing_everything() -> None:
    free = bisect_limit(lambda n: None, "CKM_SHA256_RSA_PKCS", "rsa2048", 5000)
    assert (free.largest_ok, free.smallest_refused) == (5000, None)
    assert "no limit up to 5000 B" in free.summary() and "no TLS case" in free.rules_out()
    refused = bisect_limit(lambda n: "CKR_FUNCTION_FAILED", "CKM_ECDSA_SHA1", "p256", 5000)
    assert (refused.largest_ok, refused.smallest_refused) == (None, 1)
    assert "refused every size" in refused.summary()
    assert "TLS 1.2 and TLS 1.3 alike" in refused.rules_out()


@pytest.mark.parametrize(("limit", "ruled_out", "tls13_fits"), [
    (100, "TLS 1.3 (130/146 B signed)", False),
    (1222, "every TLS 1.2 handshake", True),
    (2029, "TLS 1.2 transcripts over 2029 B", True),
    (8000, "longer chain or CA list than 8000 B", False),
])
def test_what_a_limit_rules_out(limit: int, ruled_out: str, tls13_fits: bool) -> None:
    text = MechanismLimit("CKM_ECDSA_SHA256", "p256", limit, limit + 1,
                          "CKR_DATA_INVALID").rules_out()
    assert ruled_out in text
    assert ("TLS 1.3 (130/146 B) fits" in text) is tls13_fits


def test_only_combined_mechanisms_are_swept() -> None:
    offered = ["CKM_ECDSA", "CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS", "CKM_SHA256_RSA_PKCS_PSS",
               "CKM_ECDSA_SHA256", "CKM_SHA256", "CKM_SHA256_HMAC", "CKM_SHA1_RSA_PKCS"]
    assert combined_mechanisms(offered) == [
        "CKM_ECDSA_SHA256", "CKM_SHA1_RSA_PKCS", "CKM_SHA256_RSA_PKCS_PSS"]


# --- on the token, through the interposer -------------------------------------------------


def test_nitrokey_hsm_profile_limit_is_found_exactly(tmp_path: Path) -> None:
    """OpenSC#2469: CKM_ECDSA_SHA256 takes 1222 B and refuses 1223 B (CKR_DATA_INVALID);
    CKM_ECDSA_SHA384 is hashed by OpenSC on the host (control: no limit)."""
    found = swept(tmp_path, "--p11-profile", "nitrokey-hsm-opensc",
                  "--mechanisms", "CKM_ECDSA_SHA256,CKM_ECDSA_SHA384", "--max-bytes", "8192")
    sha256 = found["CKM_ECDSA_SHA256"]
    assert (sha256["largest_ok"], sha256["smallest_refused"], sha256["refused_rv"]) == (
        1222, 1223, "CKR_DATA_INVALID")
    assert "every TLS 1.2 handshake" in sha256["rules_out"]
    sha384 = found["CKM_ECDSA_SHA384"]
    assert (sha384["largest_ok"], sha384["smallest_refused"]) == (8192, None)


def test_picohsm_profile_limit_is_the_profiles_input_cap(tmp_path: Path) -> None:
    profile = load_profile("picohsm-opensc")
    cap = profile.sign.max_input_bytes
    assert cap is not None and "CKM_ECDSA_SHA256" in (profile.sign.limit_mechanisms or ())
    found = swept(tmp_path, "--p11-profile", "picohsm-opensc",
                  "--mechanisms", "ECDSA_SHA256", "--max-bytes", "8192")
    sha256 = found["CKM_ECDSA_SHA256"]
    assert (sha256["largest_ok"], sha256["smallest_refused"], sha256["refused_rv"]) == (
        cap, cap + 1, profile.sign.over_limit_rv)


def test_plain_softhsm_has_no_limit_and_no_combined_ecdsa(tmp_path: Path) -> None:
    """Control: without a profile SoftHSM2 hashes any size itself, and offers no
    CKM_ECDSA_SHA* to sweep."""
    found = swept(tmp_path, "--mechanisms", "CKM_SHA256_RSA_PKCS", "--max-bytes", "8192")
    assert (found["CKM_SHA256_RSA_PKCS"]["largest_ok"],
            found["CKM_SHA256_RSA_PKCS"]["smallest_refused"]) == (8192, None)
    proc = token_sweep(tmp_path, "--mechanisms", "CKM_ECDSA_SHA256")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "does not offer CKM_ECDSA_SHA256" in proc.stderr and "Traceback" not in proc.stderr


def test_a_token_that_stops_answering_ends_with_what_was_measured(tmp_path: Path) -> None:
    """Issue 20 item 4: after six signatures the token never returns C_Sign.
    token-sweep prints the sizes measured so far and exits 1 within 3 x the
    timeout (set-up aside), no traceback, no process left (run() returned:
    no C_Finalize waited on the call in flight). Control: the same sweep
    without the fault finishes with exit 0."""
    timeout = 3.0
    hang = tmp_path / "hang.toml"
    hang.write_text('name = "hang-card"\n[faults]\n'
                    'hang_after = { function = "C_Sign", calls = 6 }\n')
    args = ("--mechanisms", "CKM_SHA256_RSA_PKCS", "--max-bytes", "8192",
            f"--p11-timeout={timeout:g}")
    start = time.monotonic()
    proc = token_sweep(tmp_path, "--p11-profile", str(hang), *args)
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert "largest accepted 32 B so far; stopped: no answer to 64 B" in proc.stdout
    assert "Traceback" not in proc.stderr and "without C_Finalize" in proc.stderr
    assert took < 3 * timeout + 6, took  # 6 s: python, SoftHSM token, RSA key
    found = swept(tmp_path, *args)  # control
    assert found["CKM_SHA256_RSA_PKCS"]["stopped"] is None


@pytest.mark.parametrize("mechanisms", [",", " , "])
def test_an_empty_mechanism_list_is_an_error_not_all(tmp_path: Path, mechanisms: str) -> None:
    proc = token_sweep(tmp_path, "--mechanisms", mechanisms)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "names no mechanism" in proc.stderr


def test_text_output_names_the_limit_and_what_it_rules_out(tmp_path: Path) -> None:
    proc = token_sweep(tmp_path, "--p11-profile", "nitrokey-hsm-opensc",
                       "--mechanisms", "CKM_ECDSA_SHA256", "--max-bytes", "4096")
    assert proc.returncode == 0, proc.stderr
    assert "emulation of Nitrokey HSM 2" in proc.stdout  # never presented as the device
    assert ("CKM_ECDSA_SHA256 (p256): largest accepted 1222 B, smallest refused 1223 B "
            "(CKR_DATA_INVALID)") in proc.stdout
    assert "rules out: every TLS 1.2 handshake" in proc.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--max-bytes", "0"], "--max-bytes must be between"),
    (["--max-bytes", "many"], "invalid int value"),
    (["--p11-profile", "no-such-profile"], "no-such-profile"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = token_sweep(tmp_path, *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr
