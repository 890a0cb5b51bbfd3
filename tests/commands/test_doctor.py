"""`p11tls doctor` on a real SoftHSM2 token, plain and seen through the
interposer under a profile that hides RSA-PSS: the predictions follow the
mechanisms the token offers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness.interposer import build_interposer, write_interposer_config
from harness.interposer.profile import load_profile
from harness.verdict.predict import notes


def doctor(module, label, env, *extra):
    return subprocess.run([sys.executable, "-m", "harness.cli", "doctor", "--p11-module",
                           str(module), "--p11-token-label", label, *extra],
                          capture_output=True, text=True, timeout=180, check=False,
                          env={**os.environ, **env})


def test_doctor_reports_token_mechanisms_keys_and_predictions(softhsm_store, tmp_path):
    store, token = softhsm_store
    plain = doctor(store.module, token.label, store.env, "--json")
    assert plain.returncode == 0, plain.stderr
    report = json.loads(plain.stdout)
    entry = report["tokens"][0]
    assert entry["label"] == "spare" and "CKF_LOGIN_REQUIRED" in entry["flags"]
    assert "SIGN" in entry["mechanisms"]["CKM_RSA_PKCS_PSS"]["flags"]
    assert entry["mechanisms"]["CKM_ECDSA"]["key_sizes"][1] >= 384
    assert not any("no CKM_RSA_PKCS_PSS" in p for p in entry["predictions"])
    assert report["clients"]["gnutls"].startswith("gnutls-cli")
    # the same token as an OpenPGP card offers it: no RSA-PSS, so TLS 1.3 with RSA fails
    lines = load_profile("openpgp-card").interposer_lines()
    env = write_interposer_config(store.module, tmp_path / "calls.jsonl", tmp_path / "i.conf",
                                  lines)
    emulated = doctor(build_interposer(), token.label, {**store.env, **env})
    assert emulated.returncode == 0, emulated.stderr
    assert "no CKM_RSA_PKCS_PSS: TLS 1.3 with RSA keys fails" in emulated.stdout
    calls = (tmp_path / "calls.jsonl").read_text()
    assert "C_Login" not in calls and "C_CreateObject" not in calls  # no PIN: no login


def test_doctor_unknown_token_is_one_line(softhsm_store):
    store, _ = softhsm_store
    result = doctor(store.module, "no-such-token", store.env)
    assert result.returncode == 2 and "no token labelled 'no-such-token'" in result.stderr
    assert "Traceback" not in result.stderr


def test_predictions_follow_the_mechanisms():
    full = {"CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS", "CKM_ECDSA", "CKM_EDDSA"}
    assert notes(full) == []
    combined = [str(n) for n in notes(full | {"CKM_ECDSA_SHA256"})]
    assert any("Java 17+" in n and "whole TLS 1.2 transcript" in n for n in combined)
    no_pss = [str(n) for n in notes({"CKM_RSA_PKCS", "CKM_RSA_X_509", "CKM_ECDSA"})]
    assert any("falls back to CKM_RSA_X_509 (offered here)" in n for n in no_pss)


def test_doctor_with_a_wrong_pin_is_one_line_and_not_zero(softhsm_store, tmp_path):
    """Issue 23 row 13: a wrong PIN was "0 key pairs" with exit 0. Now one line
    in CKR words, exit 2, and the PIN tried once (the interposer counts)."""
    store, token = softhsm_store
    env = write_interposer_config(store.module, tmp_path / "calls.jsonl", tmp_path / "i.conf",
                                  [])
    wrong = doctor(build_interposer(), token.label,
                   {**store.env, **env, "PKCS11_TOKEN_PIN": "0000"})
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert "CKR_PIN_INCORRECT" in wrong.stderr and "PinIncorrect" not in wrong.stderr
    assert (tmp_path / "calls.jsonl").read_text().count('"C_Login"') == 1
    right = doctor(store.module, token.label, {**store.env, "PKCS11_TOKEN_PIN": token.pin},
                   "--json")  # control: the right PIN logs in and lists the keys
    assert right.returncode == 0, right.stderr
    assert json.loads(right.stdout)["tokens"][0]["logged_in"] is True
