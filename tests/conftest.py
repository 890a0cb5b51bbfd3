"""Shared fixtures for the harness's own tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from harness.errors import ToolMissing
from harness.run.recording import find_pkcs11_spy
from harness.token.softhsm import SoftHSMToken, TemporarySoftHSM

pytest_plugins = ["pytester"]

# The suite's locks and journals stay in its own directory, never the host's
# /var/lib/p11tls. Set at import, in the controller: xdist workers and child
# runs inherit it, so they share it as runs on one host do.
os.environ.setdefault("P11TLS_STATE_DIR", tempfile.mkdtemp(prefix="p11tls-test-state-"))



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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The harness's own tests that use its fixtures ask for the plugin (a
    user's project marks its tests `p11tls` or passes an option)."""
    for item in items:
        if any(name.startswith("p11tls_") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.p11tls)
