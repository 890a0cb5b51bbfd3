"""Shared fixtures for the harness's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ToolMissing
from harness.run.recording import find_pkcs11_spy
from harness.token.softhsm import SoftHSMToken, TemporarySoftHSM

pytest_plugins = ["pytester"]



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
    try:
        return find_pkcs11_spy()
    except ToolMissing:
        pytest.skip("Requires OpenSC's pkcs11-spy.so (package opensc)")
