"""The test suite writes only into its own temporary directories (tests/conftest.py).

A child suite session started from the checkout, as `./run test` starts one,
runs a matrix case on a named token (which writes a lock and a journal) and
would write reports/ by default; the checkout's reports/ and the user's
state directory must be byte-identical afterwards, and the case's reports
must have gone to the session's own directory.
"""

from __future__ import annotations

import importlib.util

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from harness.token.softhsm import SoftHSMToken, TemporarySoftHSM

ROOT = Path(__file__).resolve().parents[1]
SUITE_ENV = ("P11TLS_TEST_SESSION", "P11TLS_REPORTS", "P11TLS_STATE_DIR")


def snapshot(directory: Path) -> dict[str, str] | None:
    """Every file (content hash) and link (target) under directory; None when absent."""
    if not directory.exists():
        return None
    found: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_file():
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[name] = "dir"
    return found


def user_state_dir(env: dict[str, str]) -> Path:
    """The state directory a user's run uses (harness.token.locking.state_dir)."""
    if env.get("P11TLS_STATE_DIR"):
        return Path(env["P11TLS_STATE_DIR"])
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "p11tls"


def test_a_suite_run_leaves_reports_and_the_user_state_alone(
        tmp_path: Path, softhsm_store: tuple[TemporarySoftHSM, SoftHSMToken]) -> None:
    store, token = softhsm_store
    # the environment of a user's shell: none of the suite's own settings
    env = {k: v for k, v in os.environ.items() if k not in SUITE_ENV}
    env.update(store.env)
    state = user_state_dir(env)
    watched = {"reports": ROOT / "reports", "journal": state / "journal", "locks": state / "locks"}
    before = {name: snapshot(path) for name, path in watched.items()}
    argv = [sys.executable, "-m", "pytest", "tests/test_matrix.py", "tests/test_suite_isolation.py",
            "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'bt'}",
            "--p11-module", str(store.module), "--p11-token-label", "spare",
            "--p11-pin", token.pin, "--p11-clients", "gnutls", "--p11-keys", "p256",
            "-k", "generate-tls13"]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # control: the case ran, on the named token, and its reports were written
    assert re.search(r"\b1 passed\b", out), out
    session = re.search(r"p11tls test session: reports and state in (\S+)", out)
    assert session, out
    assert f"reports in {session.group(1)}/reports: results.json" in out, out
    after = {name: snapshot(path) for name, path in watched.items()}
    assert after == before
    assert not Path(session.group(1)).exists()  # the session cleans its own directory


def test_a_matrix_run_is_the_main_job_not_the_suite() -> None:
    """Negative control of the rule above: `./run matrix` (tests/test_matrix.py
    alone) writes reports as documented, so the isolation does not apply."""
    # tests/conftest.py by its path: tests/explain/ has a conftest module too
    spec = importlib.util.spec_from_file_location("suite_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    suite_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite_conftest)
    _matrix_only = suite_conftest._matrix_only

    class Config:
        class invocation_params:  # noqa: N801 - pytest's attribute name
            dir = ROOT

        args = ["tests/test_matrix.py::test_handshake"]

    assert _matrix_only(Config())  # type: ignore[arg-type]
    Config.args = ["tests/test_matrix.py", "tests/reports"]
    assert not _matrix_only(Config())  # type: ignore[arg-type]
    Config.args = ["tests"]
    assert not _matrix_only(Config())  # type: ignore[arg-type]
