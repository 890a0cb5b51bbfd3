"""--p11-warm: one warm process serves every client through p11-kit's RPC.

On p11-kit 0.25 and later (Debian 13) a matrix on a named SoftHSM2 token gives
the same outcome, mechanism and byte count warm as cold, with one C_Initialize
of the module for the whole run; on p11-kit 0.24 (Debian 12), whose RPC drops
the combined PSS mechanisms, the run is refused in one line naming them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.token.warm import hidden_by_rpc, p11_kit_version, run_mechanisms, start_warm

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "tests" / "test_matrix.py"
LABEL, PIN = "warm card", "4711"


def version() -> tuple[int, ...]:
    text = p11_kit_version().split()[-1]
    return tuple(int(p) for p in text.split(".") if p.isdigit())


OLD_RPC = version() < (0, 25)


def test_what_the_rpc_would_change_is_named():
    direct = {"CKM_ECDSA": [1, 256, 521], "CKM_ECDSA_SHA256": [1, 256, 521],
              "CKM_RSA_PKCS": [2, 1024, 4096]}
    assert hidden_by_rpc(direct, dict(direct)) is None  # negative control: the same
    remote = {"CKM_ECDSA": [1, 256, 384], "CKM_RSA_PKCS": [2, 1024, 4096]}
    assert hidden_by_rpc(direct, remote) == (
        "hide CKM_ECDSA_SHA256 and change the flags or key sizes of CKM_ECDSA")
    assert set(run_mechanisms({**direct, "CKM_AES_CBC": [1, 16, 32]}, {"ecdsa"})) == {
        "CKM_ECDSA", "CKM_ECDSA_SHA256"}


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    from harness.token.softhsm import TemporarySoftHSM

    base = tmp_path_factory.mktemp("warm")
    store = TemporarySoftHSM(base / "card")
    store.init_token(LABEL, PIN)
    env = {**os.environ, **store.env, "P11TLS_STATE_DIR": str(base / "state")}
    return store.module, env, base


def matrix(module: Path, env: dict[str, str], base: Path, name: str,
           *extra: str) -> subprocess.CompletedProcess[str]:
    (base / name).mkdir()
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(MATRIX), "-p", "no:cacheprovider", "-q",
         f"--basetemp={base / name / 'bt'}", f"--p11-reports={base / name / 'reports'}",
         "--p11-clients=gnutls,openssl-engine,java,java-nocombined", "--p11-keys=p256,rsa2048",
         "--p11-module", str(module), "--p11-token-label", LABEL, "--p11-pin", PIN, *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)


@pytest.mark.skipif(not OLD_RPC, reason="p11-kit 0.25+ passes the combined mechanisms")
def test_an_rpc_that_hides_mechanisms_is_refused_in_one_line(token):
    module, env, base = token
    with pytest.raises(ConfigError, match=r"hide CKM_SHA1_RSA_PKCS_PSS, .*CKM_SHA256_RSA_PKCS_PSS"):
        start_warm(module, LABEL, base / "direct", env, {"rsa", "ecdsa"})
    proc = matrix(module, env, base, "refused", "--p11-warm", "-k", "gnutls and p256")
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if "--p11-warm refused" in line]
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in out, out
    assert "p11-kit 0.24" in lines[0] and "CKM_SHA256_RSA_PKCS_PSS" in lines[0]
    # EC keys alone: nothing they use is lost, so the warm module starts
    warm = start_warm(module, LABEL, base / "ec", env, {"ecdsa"})
    warm.stop()


@pytest.mark.skipif(OLD_RPC, reason="p11-kit 0.24's RPC drops combined mechanisms")
def test_warm_gives_what_cold_gives_with_one_c_initialize(token):
    module, env, base = token
    cold = matrix(module, env, base, "cold")
    warm = matrix(module, env, base, "warm", "--p11-warm")
    assert cold.returncode == 0, cold.stdout[-3000:] + cold.stderr[-3000:]
    assert warm.returncode == 0, warm.stdout[-3000:] + warm.stderr[-3000:]

    def seen(name: str) -> dict[str, tuple[object, ...]]:
        records = json.loads((base / name / "reports" / "results.json").read_text())["cases"]
        return {r["case_id"]: (r["outcome"], (r["sign"] or {}).get("mechanism"),
                               size((r["sign"] or {}).get("input_bytes"), r["signed_bytes"]),
                               r["module"].get("via"))
                for r in records}

    def size(token_bytes: int | None, server_bytes: int | None) -> object:
        # A whole transcript (a combined mechanism) differs by a byte or two between
        # runs (another run's certificates): there the token must have been given
        # exactly what the server counted; a digest's size must be the same.
        if token_bytes is not None and server_bytes is not None and token_bytes > 100:
            return "transcript" if token_bytes == server_bytes else token_bytes
        return token_bytes

    c, w = seen("cold"), seen("warm")
    assert set(c) == set(w) and len(c) >= 20
    assert {k: v[:3] for k, v in c.items()} == {k: v[:3] for k, v in w.items()}
    assert all(v[3] is None for v in c.values())
    assert all("p11-kit RPC" in str(v[3]) for v in w.values())
    record = next((base / "warm" / "bt").rglob("calls-warm.jsonl"))
    calls = [json.loads(line)["fn"] for line in record.read_text().splitlines()]
    assert calls.count("C_Initialize") == 1 and calls.count("C_Sign") >= 10
    assert "C_Finalize" not in calls[:-1]
