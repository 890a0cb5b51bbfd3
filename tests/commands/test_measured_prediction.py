"""Doctor predicts only what it can know: a cell that depends on what the token
does not advertise (an input limit, private-key import) is "unknown, measure
with p11tls token-sweep" until token-sweep has measured the token; then doctor
uses the measurement (kept per token serial and firmware in the state dir).

Real parts: a SoftHSM2 token seen through the interposer as the picohsm-opensc
profile makes it look (OpenSC's identity for a Pico HSM, its combined
mechanisms, its 2029-byte cap). Doctor loads the interposer itself, so it is not
handed the profile's cap: it learns the cap only from token-sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.interposer import build_interposer, write_interposer_config
from harness.interposer.profile import load_profile

ROOT = Path(__file__).resolve().parents[2]
LABEL, PIN = "pico", "648219"
SEED = "java-p256-generate-tls12"  # seed 001's cell


@pytest.fixture
def pico(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    from harness.token.softhsm import TemporarySoftHSM

    store = TemporarySoftHSM(tmp_path / "hsm")
    store.init_token(LABEL, PIN)
    env = {**os.environ, **store.env, "P11TLS_STATE_DIR": str(tmp_path / "state")}
    env.update(write_interposer_config(
        store.module, tmp_path / "calls.jsonl", tmp_path / "i.conf",
        load_profile("picohsm-opensc").interposer_lines()))
    return store.module, env, tmp_path


def doctor(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", "doctor", "--p11-module",
                           str(build_interposer()), "--p11-token-label", LABEL, "--p11-keys",
                           "p256", *extra], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def cells(env: dict[str, str]) -> dict[str, dict[str, object]]:
    proc = doctor(env, "--json")
    assert proc.returncode == 0, proc.stderr
    token = json.loads(proc.stdout)["tokens"][0]
    assert token["firmware"] == "6.6" and token["model"] == "PKCS#15 emulated"
    return {c["case_id"]: c for c in token["cells"]}


def test_doctor_predicts_the_seed_failure_once_token_sweep_measured_it(pico):
    module, env, tmp = pico
    if "java" not in cells(env)[SEED]["client"]:
        pytest.skip("Java is not installed")
    before = cells(env)
    assert before[SEED]["outcome"] == "unknown"
    assert "input limit for CKM_ECDSA_SHA256" in str(before[SEED]["why"])
    assert "measure with p11tls token-sweep" in str(before[SEED]["why"])
    imported = before["gnutls-p256-import-tls12"]
    assert imported["outcome"] == "unknown" and "imports CKK_EC" in str(imported["why"])
    assert before["gnutls-p256-generate-tls12"]["outcome"] == "ok"  # host hash: no limit in play
    text = doctor(env).stdout
    assert "not advertised by the token and not measured" in text

    sweep_env = {k: v for k, v in env.items() if k != "P11TLS_INTERPOSER_CONF"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "token-sweep", "--p11-module", str(module),
         "--p11-token-label", LABEL, "--p11-pin", PIN, "--p11-profile", "picohsm-opensc",
         "--mechanisms", "CKM_ECDSA_SHA256,CKM_ECDSA_SHA384", "--max-bytes", "4096",
         f"--p11-reports={tmp / 'reports'}"],
        cwd=ROOT, env=sweep_env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "kept for p11tls doctor and the matrix" in proc.stdout

    after = cells(env)
    seed = after[SEED]
    assert (seed["outcome"], seed["error"]) == ("fail", "CKR_GENERAL_ERROR"), seed
    assert "2029-byte input limit (measured by p11tls token-sweep)" in str(seed["why"])
    assert after["java-p256-generate-tls13"]["outcome"] == "ok"  # 130/146 B fit
    assert after["gnutls-p256-import-tls12"]["outcome"] == "ok"  # SoftHSM imported
    assert "measured by p11tls token-sweep: CKM_ECDSA_SHA256 up to 2029 B" in doctor(env).stdout
    # negative control: another state dir has no measurement of this token
    other = {**env, "P11TLS_STATE_DIR": str(tmp / "elsewhere")}
    assert cells(other)[SEED]["outcome"] == "unknown"


def test_a_measurement_of_another_identity_is_not_used(tmp_path, monkeypatch):
    from harness.token.measurements import Measurement, load_measurement, save_measurement

    monkeypatch.setenv("P11TLS_STATE_DIR", str(tmp_path / "m"))
    save_measurement(Measurement("0123", "6.6", "PKCS#15 emulated", "Pol Henarejos",
                                 {"CKM_ECDSA_SHA256": {"largest_ok": 2029,
                                                       "smallest_refused": 2030}}))
    same = {"serial": "0123", "firmware": "6.6", "model": "PKCS#15 emulated",
            "manufacturer": "Pol Henarejos"}
    assert load_measurement(same) is not None
    assert load_measurement({**same, "firmware": "6.7"}) is None  # new firmware: measure
    assert load_measurement({**same, "manufacturer": "www.CardContact.de"}) is None
    (next((tmp_path / "m" / "measured").iterdir())).write_text("{not json")
    assert load_measurement(same) is None  # unreadable: none, no traceback
