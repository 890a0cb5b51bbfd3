"""Shared fixtures for the harness's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.softhsm import SoftHSMToken, TemporarySoftHSM

pytest_plugins = ["pytester"]

SPY_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/pkcs11-spy.so",
)


@pytest.fixture
def softhsm_store(tmp_path: Path) -> tuple[TemporarySoftHSM, SoftHSMToken]:
    """A separate throw-away SoftHSM2 store with one token (label 'spare', PIN '4711').

    Only subprocesses should load it: this pytest process already loads the
    matrix's own SoftHSM2 store through python-pkcs11.
    """
    store = TemporarySoftHSM(tmp_path / "spare-softhsm")
    return store, store.init_token("spare", "4711")


@pytest.fixture
def pkcs11_spy() -> Path:
    for candidate in SPY_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    pytest.skip("Requires OpenSC's pkcs11-spy.so (package opensc)")
