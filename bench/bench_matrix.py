"""Benchmark of issue 2: harness overhead and the default matrix's wall time.

Prints, from one run:
  1. the median wall time of one harness `openssl-engine` handshake (server
     start, client through the libp11 engine and SoftHSM2, server report)
     against the same server with a bare `openssl s_client` using the same
     P-256 key from a PEM file, and their ratio (target <= 1.5);
  2. the wall time of the whole default matrix (rsa2048, p256, p384 x
     generate, import x every client x TLS 1.2, 1.3) as
     `pytest tests/test_matrix.py`, pytest start included (target <= 15 s),
     and the same without the Java clients: what Java adds (target <= 5 s).

Run: .venv/bin/python bench/bench_matrix.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness.clients import CLIENTS
from harness.config import resolve
from harness.keys import KEYS, Provisioning
from harness.matrix import Case
from harness.runner import MatrixRunner
from harness.server import HandshakeServer
from harness.tls import TLSVersion

ROOT = Path(__file__).resolve().parent.parent


def bare_handshake(runner: MatrixRunner, cert: Path, key_pem: Path, logs: Path) -> float:
    start = time.perf_counter()
    server = HandshakeServer(cert_pem=runner.ca.server_cert_pem, key_pem=runner.ca.server_key_pem,
                             client_ca_pem=runner.ca.ca_pem, tls=TLSVersion.TLS12,
                             log_path=logs / "bare-server.log")
    port = server.start()
    subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-cert", str(cert),
                    "-key", str(key_pem), "-CAfile", str(runner.ca.ca_pem), "-tls1_2"],
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=True)
    seen = server.finish()
    assert seen.accepted, "bare handshake failed"
    return time.perf_counter() - start


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
            harness_s, bare_s = [], []
            for _ in range(args.rounds):  # interleaved, so both see the same machine
                start = time.perf_counter()
                assert runner.run(case).outcome == "ok"
                harness_s.append(time.perf_counter() - start)
                bare_s.append(bare_handshake(runner, key.cert_pem, key_pem, work))
        finally:
            runner.close()
        matrix_s, summary, matrix_ok = run_matrix(work / "all")
        without_java = ",".join(
            name for name, cls in CLIENTS.items()
            if not name.startswith("java") and cls().unavailable_reason() is None)
        no_java_s, no_java_summary, no_java_ok = run_matrix(
            work / "no-java", f"--p11-clients={without_java}")
    h, b = statistics.median(harness_s), statistics.median(bare_s)
    print(f"harness openssl-engine handshake, median of {args.rounds}: {h * 1000:.1f} ms")
    print(f"bare openssl s_client with PEM key, median of {args.rounds}: {b * 1000:.1f} ms")
    print(f"ratio harness/bare: {h / b:.2f}   (target <= 1.5)")
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
