"""Per-case time cold vs warm (--p11-warm) on a module whose C_Initialize takes 1 s,
and cold with vs without the OpenSC cache where OpenSC can be measured.

The slow module is the interposer with a latency profile (`latency C_Initialize
1000`) above a throw-away SoftHSM2 token: cold, every client process loads it
and waits 1 s; warm, only the warm process does, once. Both runs use
--p11-no-record (the slow module is the interposer already; its own record
holds the C_Initialize and C_Sign times). Prints, per client, the median case
time cold and warm, the median C_Sign time, one client process start (the
case time on the same module without the latency; and a bare `CLIENT
--version`), and the target: warm <= 2 x the signature + one start.
The warm run needs p11-kit 0.25+ (Debian 13): on 0.24 it is refused, and the
bench says so. The OpenSC part needs a card: without one OpenSC lists no
token, and the bench says that it cannot be measured here.

Run: .venv/bin/python bench/bench_warm.py [--clients gnutls,openssl-engine] [--keys p256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.installed import OPENSC, find_library
from harness.interposer import build_interposer, write_interposer_config
from harness.reports.files import load_results
from harness.token.softhsm import TemporarySoftHSM

ROOT = Path(__file__).resolve().parent.parent
LABEL, PIN = "bench warm", "4711"
START_COMMANDS = {"gnutls": ["gnutls-cli", "--version"], "openssl-engine": ["openssl", "version"],
                  "java": ["java", "-version"], "java-nocombined": ["java", "-version"]}


def run(base: Path, name: str, module: Path, env: dict[str, str], clients: str, keys: str,
        *extra: str) -> tuple[list[dict[str, Any]], str, float]:
    (base / name).mkdir()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_matrix.py"), "-q",
         "-p", "no:cacheprovider", f"--basetemp={base / name / 'bt'}",
         f"--p11-reports={base / name / 'reports'}", f"--p11-clients={clients}",
         f"--p11-keys={keys}", "--p11-no-record", "--p11-module", str(module),
         "--p11-token-label", LABEL, "--p11-pin", PIN, *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    results = base / name / "reports" / "results.json"
    records = [r.to_json() for r in load_results(results)] if results.exists() else []
    tail = next((line for line in reversed((proc.stdout + proc.stderr).splitlines())
                 if "refused" in line or "passed" in line or "failed" in line), "?")
    return records, tail, took


def by_client(records: list[dict[str, Any]]) -> dict[str, float]:
    times: dict[str, list[float]] = {}
    for r in records:
        if r.get("outcome") in ("ok", "fail") and r.get("duration_s") is not None:
            times.setdefault(r["client"], []).append(float(r["duration_s"]))
    return {c: statistics.median(t) for c, t in times.items()}


def sign_ms(record_file: Path) -> float | None:
    if not record_file.exists():
        return None
    us = [json.loads(line).get("us", 0) for line in record_file.read_text().splitlines()
          if '"fn":"C_Sign"' in line.replace(" ", "")]
    return statistics.median(us) / 1000 if us else None


def signing_processes(record_file: Path) -> tuple[int, int]:
    """(processes that called C_Sign, their C_Initialize calls) in the slow
    module's record: cold, every client process; warm, the warm process alone."""
    if not record_file.exists():
        return 0, 0
    calls = [json.loads(line) for line in record_file.read_text().splitlines() if line]
    signers = {c.get("pid") for c in calls if c.get("fn") == "C_Sign"}
    inits = sum(c.get("fn") == "C_Initialize" and c.get("pid") in signers for c in calls)
    return len(signers), inits


def start_ms(client: str) -> float | None:
    argv = START_COMMANDS.get(client)
    if argv is None or shutil.which(argv[0]) is None:
        return None
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=False)
    return (time.perf_counter() - start) * 1000


def opensc_part() -> str:
    module = find_library(*OPENSC)
    if module is None:
        return "OpenSC cache: not measured: OpenSC is not installed"
    probe = subprocess.run([sys.executable, "-c", (
        "import pkcs11, sys; print(len(pkcs11.lib(sys.argv[1]).get_slots(token_present=True)))"),
        str(module)], capture_output=True, text=True, check=False)
    if probe.stdout.strip() in ("", "0"):
        return ("OpenSC cache: not measured here: OpenSC lists no token on this machine (no "
                "reader and card); on a card run this bench's cold matrix with "
                "--p11-module opensc-pkcs11.so and --p11-opensc-cache yes / no")
    return ("OpenSC cache: a card is present; measure with two matrix runs, "
            "--p11-opensc-cache yes and no, and compare the case times")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="gnutls,openssl-engine")
    parser.add_argument("--keys", default="p256")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p11tls-bench-warm-") as tmp:
        base = Path(tmp)
        store = TemporarySoftHSM(base / "hsm")
        store.init_token(LABEL, PIN)
        slow = base / "slow"
        slow.mkdir()
        conf = write_interposer_config(store.module, slow / "calls.jsonl", slow / "slow.conf",
                                       ["latency C_Initialize 1000"])
        env = {**os.environ, **store.env, **conf, "P11TLS_STATE_DIR": str(base / "state")}
        module = build_interposer()
        plain_conf = write_interposer_config(store.module, slow / "plain.jsonl",
                                             slow / "plain.conf")
        plain, _, _ = run(base, "plain", module, {**env, **plain_conf}, args.clients, args.keys)
        cold, cold_tail, cold_s = run(base, "cold", module, env, args.clients, args.keys)
        cold_sign = sign_ms(slow / "calls.jsonl")
        cold_procs = signing_processes(slow / "calls.jsonl")
        (slow / "calls.jsonl").unlink(missing_ok=True)
        warm, warm_tail, warm_s = run(base, "warm", module, env, args.clients, args.keys,
                                      "--p11-warm")
        warm_sign = sign_ms(slow / "calls.jsonl")
        warm_procs = signing_processes(slow / "calls.jsonl")
    print(f"module: the interposer with latency C_Initialize 1000 ms above SoftHSM2; "
          f"clients {args.clients}; keys {args.keys}")
    print(f"cold: {len(cold)} cases in {cold_s:.1f} s ({cold_tail}); {cold_procs[0]} processes "
          f"signed, with {cold_procs[1]} C_Initialize of the slow module")
    print(f"warm: {len(warm)} cases in {warm_s:.1f} s ({warm_tail}); {warm_procs[0]} process "
          f"signed, with {warm_procs[1]} C_Initialize of the slow module")
    c, w, p = by_client(cold), by_client(warm), by_client(plain)
    sign = warm_sign or cold_sign
    print(f"median C_Sign: cold {cold_sign or 0:.2f} ms, warm {warm_sign or 0:.2f} ms")
    # "one client process start": the case time on the same module without the
    # latency (process start, module load, handshake), and the bare `CLIENT --version`
    print(f"{'client':<18} {'cold/case':>10} {'warm/case':>10} {'no-latency':>11} "
          f"{'--version':>9} {'target':>8}")
    for client in sorted(c):
        started = start_ms(client)
        target = 2 * (sign or 0) / 1000 + p[client] if client in p else None
        warm_text = f"{w[client]:.3f} s" if client in w else "-"
        verdict = ("" if client not in w or target is None else
                   "  warm <= target" if w[client] <= target else "  warm > target")
        print(f"{client:<18} {c[client]:>8.3f} s {warm_text:>10} {p.get(client, 0):>9.3f} s "
              f"{(started or 0):>7.0f}ms {(f'{target:.3f} s' if target else '-'):>8}{verdict}")
    if not warm:
        print("warm: not measured here (see the line above: p11-kit 0.24's RPC hides "
              "mechanisms; run on Debian 13)")
    print(opensc_part())
    return 0


if __name__ == "__main__":
    sys.exit(main())
