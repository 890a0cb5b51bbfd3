"""Shared fixtures for the harness's own tests, and the suite's isolation.

The suite writes only into its own temporary directories: one session
directory holds the reports of the matrix cases the suite runs
(`P11TLS_REPORTS`) and the locks and journals of every run the suite starts
(`P11TLS_STATE_DIR`, inherited by pytester runs and subprocesses), so the
checkout's reports/ and the user's ~/.cache/p11tls stay as they were.

A session that runs only tests/test_matrix.py (`./run matrix`, `tox -e
softhsm`) is the main job, not the suite: it writes reports as documented.
Shared on purpose: the interposer and Java build caches ($XDG_CACHE_HOME/p11tls):
their entries are named by a hash of their sources and renamed into place
whole, so a test run can only add a correct entry, never change a user's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import ToolMissing
from harness.run.recording import find_pkcs11_spy
from harness.token.softhsm import SoftHSMToken, TemporarySoftHSM

pytest_plugins = ["pytester"]

MATRIX = Path(__file__).resolve().parent / "test_matrix.py"
SESSION_ENV = "P11TLS_TEST_SESSION"  # the suite's session directory, for its children
_made: list[Path] = []  # the session directory this process made (and removes)


def _matrix_only(config: pytest.Config) -> bool:
    """The run collects tests/test_matrix.py and nothing else: the main job."""
    root = config.invocation_params.dir
    paths = [a.split("::", 1)[0] for a in config.args]
    return bool(paths) and all((root / p).resolve() == MATRIX for p in paths)


def session_dir() -> Path | None:
    """The suite's session directory (reports/, state/), None in a matrix job."""
    value = os.environ.get(SESSION_ENV)
    return Path(value) if value else None


@pytest.hookimpl(tryfirst=True)  # before the p11tls plugin resolves any setting
def pytest_configure(config: pytest.Config) -> None:
    base = session_dir()
    if base is not None:
        # a child of the suite (xdist worker, a test's own pytest run): the state
        # directory it was given stands (the session's, or the test's own)
        os.environ.setdefault("P11TLS_STATE_DIR", str(base / "state"))
        os.environ.setdefault("P11TLS_REPORTS", str(base / "reports"))
        return
    if _matrix_only(config):
        return
    base = Path(tempfile.mkdtemp(prefix="p11tls-tests-"))
    _made.append(base)
    os.environ[SESSION_ENV] = str(base)  # xdist workers and children find it
    # over any of the user's: the suite writes only into its own directories
    os.environ["P11TLS_STATE_DIR"] = str(base / "state")
    os.environ["P11TLS_REPORTS"] = str(base / "reports")


def pytest_report_header(config: pytest.Config) -> list[str]:
    base = session_dir()
    return [f"p11tls test session: reports and state in {base}"] if base else []


def pytest_unconfigure(config: pytest.Config) -> None:
    for base in _made:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def _own_reports_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside a test, runs it starts (pytester, subprocesses) use their own
    working directory's reports/ as a user's would: the session's reports
    directory is for the suite's own matrix cases, resolved before any test."""
    if session_dir() is not None:
        monkeypatch.delenv("P11TLS_REPORTS", raising=False)
    yield


@pytest.fixture
def softhsm_store(tmp_path: Path) -> tuple[TemporarySoftHSM, SoftHSMToken]:
    """A separate throw-away SoftHSM2 store with one token (label 'spare').

    Its PIN holds letters no hex dump has, so a leak check cannot match a session
    ID or a key by chance (a 4-digit PIN turned up in an s_client session ID).

    Only subprocesses should load it: this pytest process already loads the
    matrix's own SoftHSM2 store through python-pkcs11.
    """
    store = TemporarySoftHSM(tmp_path / "spare-softhsm")
    return store, store.init_token("spare", "spare-" + secrets.token_hex(4))


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
