"""What some clients add to the default matrix's wall time (default: the go,
openvpn, python-ssl and eap-tls columns; `--new nss,curl` for those).

Runs `pytest tests/test_matrix.py` (the default matrix: rsa2048, p256, p384 x
generate, import x every client x TLS 1.2, 1.3, plus the forced-scheme RSA
cases) in fresh processes, with every available client and with the same
clients less the new ones, rounds interleaved, and prints the medians, their
difference, and per new client its cases, its median case time and their sum
per run (what that column alone adds) from results.json.
Run: .venv/bin/python bench/bench_clients.py [--rounds N] [--new a,b]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.clients import client_names, make_client
from harness.reports.files import load_results

ROOT = Path(__file__).resolve().parent.parent
NEW = ("go", "openvpn", "python-ssl", "eap-tls")


def run_matrix(reports: Path, clients: list[str]) -> tuple[float, str, bool]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_matrix.py"), f"--p11-reports={reports}",
         f"--p11-clients={','.join(clients)}"],
        cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    return elapsed, (proc.stdout.strip().splitlines() or ["?"])[-1], proc.returncode == 0


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results.json, read by the one reader (harness.reports.files)."""
    if not path.exists():
        return []
    return [r.to_json() for r in load_results(path)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new", default=",".join(NEW),
                        help="the clients whose columns are measured (comma-separated)")
    args = parser.parse_args()
    available = [n for n in client_names() if make_client(n).unavailable_reason() is None]
    wanted = [n for n in args.new.split(",") if n]
    new = [n for n in wanted if n in available]
    if len(new) < len(wanted):
        print(f"bench_clients: not available here: "
              f"{', '.join(n for n in wanted if n not in available)}", file=sys.stderr)
    if not new:
        return 2
    without = [n for n in available if n not in new]
    with_s: list[float] = []
    without_s: list[float] = []
    per_case: dict[str, list[float]] = {n: [] for n in new}
    ok = True
    with tempfile.TemporaryDirectory(prefix="p11tls-bench-clients-") as tmp:
        for i in range(args.rounds):
            reports = Path(tmp) / f"with-{i}"
            elapsed, summary, passed = run_matrix(reports, available)
            with_s.append(elapsed)
            ok &= passed
            for record in read_records(reports / "results.json"):
                if record.get("client") in new and record.get("duration_s"):
                    per_case[record["client"]].append(record["duration_s"])
            elapsed, summary_without, passed = run_matrix(Path(tmp) / f"without-{i}", without)
            without_s.append(elapsed)
            ok &= passed
    w, wo = statistics.median(with_s), statistics.median(without_s)
    names = ", ".join(new)
    print(f"clients: {', '.join(available)}")
    print(f"default matrix, every client, median of {args.rounds}: {w:.2f} s   [{summary}]")
    print(f"the same without {names}: {wo:.2f} s   [{summary_without}]")
    print(f"{names} add: {w - wo:.2f} s "
          f"(runs: {', '.join(f'{a - b:+.2f}' for a, b in zip(with_s, without_s))})")
    for name, durations in per_case.items():
        if durations:
            cases = len(durations) // args.rounds
            print(f"{name}: {cases} cases, median case {statistics.median(durations) * 1000:.1f} ms"
                  f" (client and its peer, in the harness), {sum(durations) / args.rounds:.2f} s"
                  " per run")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
