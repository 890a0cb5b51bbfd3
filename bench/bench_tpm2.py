"""Benchmark: the matrix on tpm2-pkcs11 over swtpm next to the throw-away SoftHSM2.

Prints, per module, from `pytest tests/test_matrix.py` runs (pytest start
included; the tpm2 run also starts swtpm, creates its token and flushes the
TPM between cases, and starts a fresh JVM per Java case, see harness/token/tpm2.py):
  1. the wall time of the whole matrix (same keys and clients on both);
  2. the median time the module spends per signature, from the recorded call
     durations of each successful case's last signing operation (the
     CertificateVerify): C_SignInit through C_Sign/C_SignFinal, and its two
     parts (tpm2-pkcs11 loads the key into the TPM in C_SignInit).

Run: .venv/bin/python bench/bench_tpm2.py [--keys rsa2048,p256,p384] [--clients all]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.reports.files import load_results
from harness.token.tpm2 import unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
SIGN_CALLS = ("C_SignInit", "C_Sign", "C_SignUpdate", "C_SignFinal")


def run_matrix(module: str | None, keys: str, clients: str, reports: Path) -> float:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--basetemp", str(reports.parent / f"{reports.name}-tmp"), "tests/test_matrix.py",
            "--p11-reports", str(reports), "--p11-keys", keys, "--p11-clients", clients]
    if module:
        argv += ["--p11-module", module]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: a case failed; still a measurement
        sys.exit(f"bench_tpm2: pytest ended with {proc.returncode}: "
                 f"{(proc.stdout + proc.stderr).strip().splitlines()[-1:]}")
    return elapsed


def signature_times_ms(reports: Path) -> list[tuple[float, float]]:
    """Per successful case, the module's time for its one signing operation."""
    times = []
    records = [r.to_json() for r in load_results(reports / "results.json")]
    for record in records:
        if record.get("outcome") != "ok" or not record.get("calls"):
            continue
        calls = record["calls"]
        inits = [i for i, c in enumerate(calls) if c.get("fn") == "C_SignInit"
                 and c.get("rv") == "CKR_OK"]
        if not inits:
            continue
        spent = [0, 0]  # C_SignInit (tpm2-pkcs11 loads the key into the TPM), the signing
        for call in calls[inits[-1]:]:  # the last signing operation: the CertificateVerify
            if call.get("fn") in SIGN_CALLS:
                spent[call["fn"] != "C_SignInit"] += int(call.get("us") or 0)
        times.append((spent[0] / 1000, spent[1] / 1000))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="rsa2048,p256,p384")
    parser.add_argument("--clients", default="all")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(f"bench_tpm2: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-tpm2-") as tmp:
        rows = []
        for name, module in (("softhsm2", None), ("tpm2", "tpm2")):
            reports = Path(tmp) / name
            wall = run_matrix(module, args.keys, args.clients, reports)
            times = signature_times_ms(reports)
            rows.append((name, wall, times))
    print(f"matrix: keys {args.keys}, clients {args.clients}")
    for name, wall, times in rows:
        def median(values: list[float]) -> str:
            return f"{statistics.median(values):.2f} ms" if values else "-"

        print(f"{name:9} whole matrix {wall:6.2f} s; per signature in the module (median of "
              f"{len(times)}): C_SignInit..C_Sign {median([a + b for a, b in times])}, "
              f"C_SignInit {median([a for a, _ in times])}, "
              f"C_Sign(Update/Final) {median([b for _, b in times])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
