"""A worker's clean-up on a named token waits for the case lock: under xdist
another worker may still be in a case there, and two processes writing one
SoftHSM2 token at once crashed a worker (Debian 13, `-n 2`, a worker's
C_DestroyObject beside the other's import). The wait is bounded by the case
timeout, so a worker stuck on a hung token cannot keep this one's objects on
it. In a child process on the spare SoftHSM2 token: this pytest process may
hold SoftHSM2 already."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.token.locking import TokenLock

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from harness.matrix.keys import KEYS, Provisioning
from harness.run.config import resolve
from harness.token.run_tokens import RunTokens

settings = resolve({"p11_module": sys.argv[1], "p11_token_label": "spare",
                    "p11_pin": os.environ["SPARE_PIN"], "p11_timeout": sys.argv[3]}, {},
                   {}, Path(sys.argv[2]))
with ExitStack() as stack:
    tokens = RunTokens(settings, Path(sys.argv[2]), stack, profile=None, run_lock_held=True,
                       session_id=None, say=None)
    tokens.key(KEYS["p256"], Provisioning.GENERATE)
    print(tokens.case_lock.path, flush=True)
    sys.stdin.readline()  # the test holds the case lock now (or not)
    started = time.monotonic()
    failure = tokens.clean()
    print(f"{time.monotonic() - started:.2f}", failure, flush=True)
"""


def start(store, spare, tmp_path: Path, timeout_s: float) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(store.module), str(tmp_path / "work"), str(timeout_s)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, **store.env, "SPARE_PIN": spare.pin,
                        "P11TLS_STATE_DIR": str(tmp_path / "state")})
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        pytest.fail(proc.communicate()[1])
    return proc, Path(line)


def finish(proc: subprocess.Popen) -> tuple[float, str]:
    out, err = proc.communicate("\n", timeout=60)
    assert proc.returncode == 0, err
    took, failure = out.split(maxsplit=1)
    return float(took), failure.strip()


def keys_left(store, spare) -> int:
    listing = subprocess.run(
        ["pkcs11-tool", "--module", str(store.module), "--token-label", "spare", "--login",
         "--pin", spare.pin, "--list-objects", "--type", "privkey"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **store.env})
    return listing.stdout.count("Private Key Object")


def test_clean_up_waits_for_the_other_workers_case(softhsm_store, tmp_path):
    store, spare = softhsm_store
    proc, lock_path = start(store, spare, tmp_path, 20)
    other = TokenLock(lock_path.stem, "the other worker", lock_path.parent)
    other.acquire()  # the other worker is in a case
    proc.stdin.write("\n")
    proc.stdin.flush()
    time.sleep(1.0)
    assert keys_left(store, spare) == 1  # not removed while the other case runs
    other.release()
    took, failure = finish(proc)
    assert failure == "None" and took >= 0.9, (took, failure)
    assert keys_left(store, spare) == 0


def test_clean_up_without_another_case_does_not_wait(softhsm_store, tmp_path):
    store, spare = softhsm_store  # control: nobody holds the lock
    proc, _ = start(store, spare, tmp_path, 20)
    took, failure = finish(proc)
    assert failure == "None" and took < 0.9, (took, failure)
    assert keys_left(store, spare) == 0


def test_clean_up_does_not_wait_past_the_case_timeout(softhsm_store, tmp_path):
    store, spare = softhsm_store  # the other worker hangs in its case
    proc, lock_path = start(store, spare, tmp_path, 1.5)
    other = TokenLock(lock_path.stem, "the other worker", lock_path.parent)
    other.acquire()
    try:
        took, failure = finish(proc)
    finally:
        other.release()
    assert failure == "None" and 1.4 <= took < 10, (took, failure)
    assert keys_left(store, spare) == 0
