"""The fixed-slot rule: SmartCard-HSM kin (free key IDs) are provisioned on,
OpenPGP and PIV cards (fixed slots) are refused with a hint every command takes.

The rule is checked on the identities OpenSC's emulators set (harness.token.
fixed_slots cites them); then on a real SoftHSM2 token whose identity an
emulation profile changes ([token] model = "PKCS#15 emulated"), through the
matrix, `p11tls sweep` and `p11tls token-sweep` as child processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.interposer.profile import load_profile
from harness.token.fixed_slots import OVERRIDE_ENV, OVERRIDE_OPTION, fixed_slot_reason, slot_verdict

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "tests" / "test_matrix.py"
LABEL, PIN = "lab card", "4711"

# (model, manufacturer, label) as OpenSC reports them (fixed_slots' docstring)
FREE_ID = [
    ("PKCS#15 emulated", "Pol Henarejos", "SmartCard-HSM (UserPIN)"),  # Pico HSM
    ("PKCS#15 emulated", "www.CardContact.de", "SmartCard-HSM (UserPIN)"),  # Nitrokey HSM
    ("PKCS#15 emulated", "Bundesdruckerei GmbH", "GoID (UserPIN)"),
    ("PKCS#15 emulated", "some maker", "SmartCard-HSM (UserPIN)"),  # EF.TokenInfo's maker
    ("SoftHSM v2", "SoftHSM project", "anything"),
]
FIXED = [
    ("PKCS#15 emulated", "OpenPGP project", "OpenPGP card (User PIN)"),
    ("PKCS#15 emulated", "Nitrokey", "OpenPGP card (User PIN (sig))"),  # Nitrokey Start
    ("PKCS#15 emulated", "Pol Henarejos", "OpenPGP card (User PIN)"),  # Pico OpenPGP
    ("PKCS#15 emulated", "piv_II", "PIV_II (PIV_II)"),
    ("PIV_II", "piv_II", "card"),
    ("YubiKey YK5", "Yubico", "YubiKey PIV #123"),
]


def info(model: str, maker: str, label: str) -> dict[str, str]:
    return {"model": model, "manufacturer": maker, "token_label": label}


@pytest.mark.parametrize("model, maker, label", FREE_ID)
def test_free_id_cards_are_provisioned_on(model, maker, label):
    assert fixed_slot_reason(info(model, maker, label)) is None
    assert "would create its keys here" in slot_verdict(info(model, maker, label))


@pytest.mark.parametrize("model, maker, label", FIXED)
def test_fixed_slot_cards_are_refused_with_the_override_named(model, maker, label):
    reason = fixed_slot_reason(info(model, maker, label))
    assert reason is not None and "fixed slots" in reason
    assert OVERRIDE_OPTION in reason and OVERRIDE_ENV in reason
    assert slot_verdict(info(model, maker, label)).startswith("the matrix would refuse")


def test_an_unknown_emulated_card_or_a_silent_token_is_refused():
    unknown = fixed_slot_reason(info("PKCS#15 emulated", "Some Vendor", "Some card"))
    assert unknown is not None and "free key IDs" in unknown and OVERRIDE_OPTION in unknown
    silent = fixed_slot_reason(info("", "", "x"))
    assert silent is not None and "does not say what it is" in silent


def test_a_profile_can_say_what_opensc_reports(tmp_path):
    shipped = load_profile("picohsm-opensc").token
    assert (shipped.model, shipped.manufacturer, shipped.firmware) == (
        "PKCS#15 emulated", "Pol Henarejos", "6.6")
    lines = load_profile("picohsm-opensc").interposer_lines()
    assert "token_model PKCS#15 emulated" in lines  # the C side takes the rest of the line


@pytest.mark.parametrize("model", ["PKCS#15 emulated!", " leading", "trailing ", "tab\there"])
def test_a_model_that_does_not_fit_is_refused(tmp_path, model):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'name = "bad"\n[token]\nmodel = "{model}"\n')
    with pytest.raises(ConfigError, match="token.model"):
        load_profile(bad)


# -- a real token under a profile, through every command -------------------------------


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    from harness.token.softhsm import TemporarySoftHSM

    base = tmp_path_factory.mktemp("fixed-slots")
    store = TemporarySoftHSM(base / "card")
    store.init_token(LABEL, PIN)
    env = {**os.environ, **store.env, "P11TLS_STATE_DIR": str(base / "state")}
    env.pop(OVERRIDE_ENV, None)
    return store.module, env


def profile(tmp_path: Path, model: str, maker: str) -> Path:
    path = tmp_path / "identity.toml"
    path.write_text(f'name = "identity"\n[token]\nmodel = "{model}"\n'
                    f'manufacturer = "{maker}"\nfirmware = "6.6"\n')
    return path


def command(kind: str, module: Path, tmp_path: Path, prof: Path) -> list[str]:
    named = ["--p11-module", str(module), "--p11-token-label", LABEL, "--p11-pin", PIN,
             "--p11-profile", str(prof), f"--p11-reports={tmp_path / 'reports'}"]
    if kind == "matrix":
        return [sys.executable, "-m", "pytest", str(MATRIX), "-p", "no:cacheprovider", "-q",
                f"--basetemp={tmp_path / 'bt'}", "--p11-clients=gnutls", "-k",
                "gnutls-p256-generate-tls13", *named]
    if kind == "sweep":
        return [sys.executable, "-m", "harness.cli", "sweep", "--clients", "gnutls",
                "--keys", "p256", "--steps", "0", "--coarse", *named]
    return [sys.executable, "-m", "harness.cli", "token-sweep", "--mechanisms",
            "CKM_SHA256_RSA_PKCS", "--max-bytes", "64", *named]


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.parametrize("kind", ["matrix", "sweep", "token-sweep"])
def test_a_smartcard_hsm_runs_without_an_override(token, tmp_path, kind):
    module, env = token
    proc = run(command(kind, module, tmp_path, profile(tmp_path, "PKCS#15 emulated",
                                                       "www.CardContact.de")), env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "fixed slots" not in out and "Traceback" not in out


@pytest.mark.parametrize("kind", ["matrix", "sweep", "token-sweep"])
@pytest.mark.parametrize("maker", ["OpenPGP project", "piv_II"])
def test_openpgp_and_piv_are_refused_and_the_hint_is_accepted(token, tmp_path, kind, maker):
    module, env = token
    argv = command(kind, module, tmp_path, profile(tmp_path, "PKCS#15 emulated", maker))
    proc = run(argv, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out
    refusals = [line for line in out.splitlines() if "fixed slots" in line]
    assert len(refusals) == 1 and OVERRIDE_OPTION in refusals[0], out
    # the hint names what this command accepts: the option, then the environment
    accepted = run(argv + [OVERRIDE_OPTION], env)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    by_env = run(argv, {**env, OVERRIDE_ENV: "yes"})
    assert by_env.returncode == 0, by_env.stdout + by_env.stderr


@pytest.mark.parametrize("maker, verdict", [
    ("Pol Henarejos", "the matrix would create its keys here: the token says it is a Pico HSM"),
    ("OpenPGP project", "the matrix would refuse to create keys here"),
])
def test_doctor_says_before_a_run_whether_the_matrix_would_refuse(token, tmp_path, maker,
                                                                   verdict):
    module, env = token
    proc = run([sys.executable, "-m", "harness.cli", "doctor", "--p11-module", str(module),
                "--p11-token-label", LABEL, "--p11-profile",
                str(profile(tmp_path, "PKCS#15 emulated", maker))], env)
    assert proc.returncode == 0, proc.stderr
    assert verdict in proc.stdout
    # the token's firmware (the profile's 6.6), not the slot's
    assert f"PKCS#15 emulated by {maker}, serial" in proc.stdout and "firmware 6.6" in proc.stdout
