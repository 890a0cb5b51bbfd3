"""The interposer across fork(): a child forked while another thread of the
parent holds the interposer's record lock neither hangs nor records under the
parent's thread id (tests/interposer/fork_driver.py does the forking)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import ToolMissing
from harness.interposer import CONF_ENV, build_interposer, write_interposer_config
from harness.token.softhsm import TemporarySoftHSM

DRIVER = Path(__file__).with_name("fork_driver.py")


def run_fork_driver(module: Path, tmp_path: Path, softhsm_env: dict[str, str]) -> dict:
    record = tmp_path / "record.fifo"
    os.mkfifo(record, 0o600)
    env = {k: v for k, v in os.environ.items() if k not in (CONF_ENV, "PKCS11SPY")}
    env.update(softhsm_env)
    env.update(write_interposer_config(module, record, tmp_path / "fork.conf"))
    proc = subprocess.run([sys.executable, str(DRIVER), str(build_interposer()),
                           json.dumps({"record": str(record)})],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> TemporarySoftHSM:
    try:
        build_interposer()
        hsm = TemporarySoftHSM(tmp_path_factory.mktemp("fork") / "softhsm")
        hsm.init_token("fork", "fork-pin-1234")
    except ToolMissing as exc:
        pytest.skip(str(exc))
    return hsm


def test_child_forked_while_the_record_lock_is_held(softhsm: TemporarySoftHSM,
                                                    tmp_path: Path) -> None:
    out = run_fork_driver(softhsm.module, tmp_path, softhsm.env)
    # The situation the test is about: the other thread was stuck in a write,
    # holding the lock, when the fork began (else the test would prove nothing).
    assert out["blocked_before_fork"] and out["parent_lines"] > 100
    assert out["child"] == "exit 0", "the child hung on a lock inherited from the parent"
    # One line, with the child's own pid and thread id (its only thread: tid == pid),
    # not the id the forking thread had in the parent.
    assert out["child_lines"] == [{"fn": "C_GetInfo", "pid": out["child_pid"],
                                   "tid": out["child_pid"]}]
    assert out["child_pid"] != out["parent_pid"]
