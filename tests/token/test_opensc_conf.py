"""The run-private OpenSC configuration, read by the installed OpenSC itself.

There is no card here: what can be shown is that OpenSC reads the file (its
tools list only the chosen driver and clear the cache directory it names),
that the harness picks the card's own driver from what the token says, and
that other modules and `--p11-opensc-cache no` are left alone. That the
recorded mechanisms and sizes are the same with and without the cache needs a
card (docs: measure with a run of each and `p11tls diff`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.token.opensc_conf import (
    card_driver,
    is_opensc,
    opensc_environment,
    parse_cache_setting,
    write_conf,
)

ROOT = Path(__file__).resolve().parents[2]
needs_opensc = pytest.mark.skipif(shutil.which("opensc-tool") is None,
                                  reason="needs opensc-tool (package opensc)")
PICO = {"model": "PKCS#15 emulated", "manufacturer": "Pol Henarejos",
        "token_label": "SmartCard-HSM (UserPIN)"}


def opensc(tool: str, conf: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], env={**os.environ, **conf}, capture_output=True,
                          text=True, timeout=60, check=False)


@needs_opensc
def test_opensc_reads_the_driver_and_the_cache_directory(tmp_path):
    conf = write_conf(tmp_path / "run", "sc-hsm")
    drivers = opensc("opensc-tool", conf, "--list-drivers").stdout
    assert "sc-hsm" in drivers and "openpgp" not in drivers and "PIV-II" not in drivers
    every = opensc("opensc-tool", write_conf(tmp_path / "all", None), "--list-drivers").stdout
    assert "openpgp" in every and "sc-hsm" in every  # negative control: no restriction
    cached = tmp_path / "run" / "opensc-cache" / "marker"
    cached.write_text("x")
    other = tmp_path / "other" / "opensc-cache" / "marker"
    write_conf(tmp_path / "other", "sc-hsm")
    other.write_text("x")
    opensc("pkcs15-tool", conf, "--clear-cache")  # OpenSC empties the file_cache_dir it reads
    assert not cached.exists() and other.exists()


@pytest.mark.parametrize("info, driver", [
    (PICO, "sc-hsm"),
    ({"model": "PKCS#15 emulated", "manufacturer": "www.CardContact.de",
      "token_label": "SmartCard-HSM (UserPIN)"}, "sc-hsm"),
    ({"model": "PKCS#15 emulated", "manufacturer": "OpenPGP project",
      "token_label": "OpenPGP card (User PIN)"}, "openpgp"),
    ({"model": "PKCS#15 emulated", "manufacturer": "piv_II",
      "token_label": "PIV_II (PIV_II)"}, "PIV-II"),
    ({"model": "PKCS#15 emulated", "manufacturer": "Some Vendor", "token_label": "x"}, None),
])
def test_the_card_s_own_driver(info, driver):
    assert card_driver(info) == driver


def test_only_opensc_modules_and_only_when_on(tmp_path):
    asked: list[dict[str, str]] = []

    def describe(env: dict[str, str]) -> dict[str, str]:
        asked.append(env)
        assert Path(env["OPENSC_CONF"]).is_file()  # the first load already uses the file
        return PICO

    env = opensc_environment(Path("/usr/lib/opensc-pkcs11.so"), "t", tmp_path / "a", True,
                             describe)
    assert "card_drivers = sc-hsm;" in Path(env["OPENSC_CONF"]).read_text()
    assert len(asked) == 1
    off = opensc_environment(Path("/usr/lib/opensc-pkcs11.so"), "t", tmp_path / "b", False,
                             describe)
    softhsm = opensc_environment(Path("/usr/lib/softhsm/libsofthsm2.so"), "t", tmp_path / "c",
                                 True, describe)
    assert off == {} and softhsm == {} and len(asked) == 1
    assert is_opensc("onepin-opensc-pkcs11.so") and not is_opensc("libsofthsm2.so")


@pytest.mark.parametrize("value, on", [(None, True), ("yes", True), ("no", False),
                                       ("off", False)])
def test_the_option_s_values(value, on):
    assert parse_cache_setting(value) is on


def test_a_bad_value_is_one_line():
    with pytest.raises(ConfigError, match="takes yes or no"):
        parse_cache_setting("sometimes")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "sweep",
                           "--p11-opensc-cache", "sometimes"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("--p11-opensc-cache takes yes or no, not 'sometimes'")
