"""Benchmark of issue 2: harness overhead and the default matrix's wall time.

Prints, from one run:
  1. the median wall time of one harness `openssl-engine` handshake (server
     armed, client through the libp11 engine and SoftHSM2, calls recorded,
     server report) against a bare `openssl s_client` with the same P-256 key
     in a PEM file, against the same in-process server of the same runner,
     rounds interleaved, and their ratio (target <= 1.15); and a bare
     s_client with the token key through the engine, without the harness;
  2. the wall time of the whole default matrix (rsa2048, p256, p384 x
     generate, import x every client x TLS 1.2, 1.3) as
     `pytest tests/test_matrix.py`, pytest start included (target <= 15 s),
     and the same without the Java clients: what Java adds (target <= 5 s).

Run: .venv/bin/python bench/bench_matrix.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness.clients import CLIENTS
from harness.clients.base import pct, pct_bytes
from harness.matrix.cases import Case
from harness.matrix.keys import KEYS, Provisioning
from harness.run.config import resolve
from harness.run.runner import MatrixRunner
from harness.tls.server import ServerCase
from harness.tls.version import TLSVersion
from harness.token.provision import ProvisionedKey

ROOT = Path(__file__).resolve().parent.parent


def bare_handshake(runner: MatrixRunner, argv: list[str], env: dict[str, str] | None,
                   logs: Path) -> float:
    """A bare s_client against the same in-process server as the harness case."""
    server = runner.server()
    start = time.perf_counter()
    server.arm(ServerCase(TLSVersion.TLS12, log_path=logs / "bare-server.log"))
    subprocess.run([*argv, "-connect", f"127.0.0.1:{server.port}", "-tls1_2"], env=env,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)
    seen = server.collect()
    assert seen.accepted, f"bare handshake failed: {seen.error}"
    return time.perf_counter() - start


def bare_clients(runner: MatrixRunner, key: ProvisionedKey,
                 key_pem: Path) -> dict[str, tuple[list[str], dict[str, str] | None]]:
    """argv and environment of s_client with the key in a PEM file, and of
    s_client with the same key on the token through the libp11 engine, loading
    SoftHSM2 directly (no interposer, no harness)."""
    common = ["openssl", "s_client", "-cert", str(key.cert_pem), "-CAfile", str(runner.ca.ca_pem)]
    uri = (f"pkcs11:token={pct(runner.token_labels['main'])};"
           f"id={pct_bytes(bytes.fromhex(key.id_hex))};type=private")
    engine_env = {**os.environ, **runner.env, "PKCS11_MODULE_PATH": str(runner.module),
                  "P11TLS_PIN": runner.pin}
    return {
        "pem": ([*common, "-key", str(key_pem)], None),
        "engine": ([*common, "-engine", "pkcs11", "-keyform", "engine", "-key", uri,
                    "-pass", "env:P11TLS_PIN"], engine_env),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p11tls-bench-") as tmp:
        work = Path(tmp)
        settings = resolve({"p11_reports": str(work / "reports")}, {}, {})
        runner = MatrixRunner(settings, workdir=work / "run")
        try:
            private = ec.generate_private_key(ec.SECP256R1())
            key_pem = work / "client.key"
            key_pem.write_bytes(private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            provisioner = runner.provisioners[runner.token_labels["main"]]
            key = provisioner.provision(KEYS["p256"], Provisioning.IMPORT, private_key=private)
            runner.keys[("p256", Provisioning.IMPORT)] = key
            case = Case("openssl-engine", KEYS["p256"], Provisioning.IMPORT, TLSVersion.TLS12)
            bare = bare_clients(runner, key, key_pem)
            harness_s: list[float] = []
            bare_s: dict[str, list[float]] = {name: [] for name in bare}
            for _ in range(args.rounds):  # interleaved, so all see the same machine
                start = time.perf_counter()
                assert runner.run(case).outcome == "ok"
                harness_s.append(time.perf_counter() - start)
                for name, (argv, env) in bare.items():
                    bare_s[name].append(bare_handshake(runner, argv, env, work))
        finally:
            runner.close()
        matrix_s, summary, matrix_ok = run_matrix(work / "all")
        without_java = ",".join(
            name for name, cls in CLIENTS.items()
            if not name.startswith("java") and cls().unavailable_reason() is None)
        no_java_s, no_java_summary, no_java_ok = run_matrix(
            work / "no-java", f"--p11-clients={without_java}")
    h = statistics.median(harness_s)
    b, e = (statistics.median(bare_s[name]) for name in ("pem", "engine"))
    print(f"harness openssl-engine handshake, median of {args.rounds}: {h * 1000:.1f} ms")
    print(f"bare openssl s_client with PEM key, median of {args.rounds}: {b * 1000:.1f} ms")
    print(f"ratio harness/bare: {h / b:.2f}   (target <= 1.15)")
    print(f"bare s_client with the token key through the engine: {e * 1000:.1f} ms; "
          f"harness/bare engine: {h / e:.2f} (what the harness itself adds)")
    print(f"default matrix wall time incl. pytest start: {matrix_s:.2f} s   (target <= 15 s)"
          f"   [{summary}]")
    print(f"the same without the Java clients: {no_java_s:.2f} s   [{no_java_summary}]")
    print(f"Java adds to the default matrix: {matrix_s - no_java_s:.2f} s   (target <= 5 s)")
    return 0 if matrix_ok and no_java_ok else 1


def run_matrix(reports: Path, *options: str) -> tuple[float, str, bool]:
    """Wall time of `pytest tests/test_matrix.py` in a fresh process, its summary line."""
    start = time.perf_counter()
    matrix = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_matrix.py"), f"--p11-reports={reports}", *options],
        cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    return elapsed, (matrix.stdout.strip().splitlines() or ["?"])[-1], matrix.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
