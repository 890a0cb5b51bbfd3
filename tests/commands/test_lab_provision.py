"""`p11tls provision`: lab keys put on a token once, used read-only, removed
exactly; on a separate throw-away SoftHSM2 token, in child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MATRIX_TEST = (Path(__file__).parents[1] / "test_matrix.py").read_text()


@pytest.fixture
def lab(softhsm_store, tmp_path):
    store, token = softhsm_store
    env = {**os.environ, **store.env, "PKCS11_TOKEN_PIN": token.pin,
           "P11TLS_STATE_DIR": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("P11TLS_LAB_CA_KEY", None)

    def provision(*args: str, pin: bool = True) -> subprocess.CompletedProcess[str]:
        run_env = env if pin else {k: v for k, v in env.items() if k != "PKCS11_TOKEN_PIN"}
        return subprocess.run(
            [sys.executable, "-m", "harness.cli", "provision", "--p11-module", str(store.module),
             "--p11-token-label", token.label, "--lab-ca-cert", str(tmp_path / "certs" /
                                                                    "lab-ca.pem"), *args],
            capture_output=True, text=True, env=run_env, timeout=120, check=False)

    def objects() -> str:
        return subprocess.run(
            ["pkcs11-tool", "--module", str(store.module), "--token-label", token.label,
             "--login", "--pin", token.pin, "--list-objects"],
            capture_output=True, text=True, env=env, check=True).stdout

    return store, token, provision, objects, tmp_path


def test_provision_once_run_read_only_then_remove_exactly_those(lab, pytester):
    store, token, provision, objects, tmp_path = lab
    subprocess.run(["pkcs11-tool", "--module", str(store.module), "--token-label", token.label,
                    "--login", "--pin", token.pin, "--keypairgen", "--key-type",
                    "EC:prime256v1", "--label", "users-key", "--id", "42"],
                   capture_output=True, env={**os.environ, **store.env}, check=True)
    first = provision("--p11-keys", "p256,rsa2048")
    assert first.returncode == 0, first.stderr
    assert "made the lab CA" in first.stdout
    key = tmp_path / "config" / "p11tls" / "lab-ca.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "certs" / "lab-ca.pem").exists()
    listed = objects()
    assert listed.count("label:      p11tls-lab-p256\n") == 3  # key pair and certificate
    assert listed.count("label:      p11tls-lab-rsa2048\n") == 3
    # a second run changes nothing and makes no new CA
    again = provision("--p11-keys", "p256,rsa2048")
    assert again.returncode == 0 and "already there" in again.stdout
    assert "made the lab CA" not in again.stdout
    assert objects() == listed
    # nightly: read-only on the lab keys, recognised by label and CKA_ID
    pytester.makepyfile(test_matrix=MATRIX_TEST)
    mp = pytest.MonkeyPatch()
    mp.setenv("SOFTHSM2_CONF", store.env["SOFTHSM2_CONF"])
    mp.setenv("P11TLS_STATE_DIR", str(tmp_path / "state"))
    try:
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", f"--p11-module={store.module}",
            f"--p11-token-label={token.label}", f"--p11-pin={token.pin}", "--p11-existing",
            "--p11-clients=gnutls", "--p11-reports=reports", timeout=300)
    finally:
        mp.undo()
    result.assert_outcomes(passed=5)  # 2 keys × 2 TLS versions + the forced RSA row
    records = json.loads((pytester.path / "reports" / "results.json").read_text())["cases"]
    assert {r["key"] for r in records} == {"p11tls-lab-p256", "p11tls-lab-rsa2048"}
    assert all("p11tls lab CA" in k["issuer"] for k in records[0]["module"]["existing_keys"])
    assert objects() == listed
    # --remove: the lab objects go, the user's key stays
    removed = provision("--remove")
    assert removed.returncode == 0, removed.stderr
    assert "removed 6 lab objects" in removed.stdout
    left = objects()
    assert "p11tls-lab-" not in left and "users-key" in left


def test_provision_refuses_without_pin_and_with_a_ca_certificate_but_no_key(lab):
    store, token, provision, objects, tmp_path = lab
    no_pin = provision("--p11-keys", "p256", pin=False)
    assert no_pin.returncode == 2
    assert no_pin.stderr.strip().count("\n") == 0 and "PKCS11_TOKEN_PIN" in no_pin.stderr
    made = provision("--p11-keys", "p256")
    assert made.returncode == 0, made.stderr
    (tmp_path / "config" / "p11tls" / "lab-ca.key").unlink()
    orphan = provision("--p11-keys", "p384")
    assert orphan.returncode == 2
    assert "exists but its key" in orphan.stderr and "Traceback" not in orphan.stderr
    assert "p11tls-lab-p384" not in objects()
