"""Benchmark: how often `p11tls explain` is right on logs it was not written
for, and how fast it reads a large log.

Prints:
  1. the score on the field corpus (tests/data/field/), develop and held-out
     parts separately. Right = the first failing call's function and return
     code are the thread's answer (only the code where the thread names no
     function), or, where the thread says no PKCS#11 call failed, explain
     says so (rule `no-failing-call`) and blames no call. The held-out score
     is the one that counts; its misses are not listed (rules are not tuned
     to it).
  2. the score on tests/data/explain/heldout/ (logs made by real tools here).
  3. the time and peak memory (max RSS of a fresh process) to explain a
     200 MB pkcs11-spy log, and that /dev/zero and a binary file are refused
     in one line.

Run: .venv/bin/python bench/bench_explain.py [--megabytes 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from harness.errors import ConfigError
from harness.explain.client_side import RULE as NO_CALL
from harness.explain.explanation import Explanation, explain_file

ROOT = Path(__file__).resolve().parent.parent
FIELD = ROOT / "tests" / "data" / "field"
HELDOUT_LOGS = ROOT / "tests" / "data" / "explain" / "heldout"


def _explain(path: Path) -> Explanation | str:
    try:
        return explain_file(path)
    except ConfigError as exc:
        return str(exc)


def right(case: dict[str, Any], got: Explanation | str) -> bool:
    if isinstance(got, str):
        return False
    if case.get("no_failing_call"):
        return got.first_failure is None and any(f.rule == NO_CALL for f in got.findings)
    if got.first_failure is None:
        return False
    call = got.calls[got.first_failure]
    return call.rv == case["rv"] and call.fn == case.get("function", call.fn)


def describe(got: Explanation | str) -> str:
    if isinstance(got, str):
        return got[:120]
    if got.first_failure is None:
        return "no failing call; rules " + ",".join(f.rule for f in got.findings)
    call = got.calls[got.first_failure]
    return f"{call.fn} {call.rv}"


def score_part(part: str, show_misses: bool) -> tuple[int, int]:
    cases = tomllib.loads((FIELD / part / "manifest.toml").read_text())["case"]
    good = 0
    for case in cases:
        got = _explain(FIELD / part / case["file"])
        if right(case, got):
            good += 1
        elif show_misses:
            want = ("no failing call" if case.get("no_failing_call")
                    else f"{case.get('function', '*')} {case['rv']}")
            print(f"    miss {case['id']}: want {want}, got {describe(got)}")
    return good, len(cases)


def score_heldout_logs() -> tuple[int, int]:
    good = total = 0
    for expect_path in sorted(HELDOUT_LOGS.glob("*.expect.toml")):
        expect = tomllib.loads(expect_path.read_text())
        log = next(p for p in HELDOUT_LOGS.iterdir()
                   if p.name != expect_path.name and p.name.startswith(
                       expect_path.name.removesuffix(".expect.toml") + "."))
        got = _explain(log)
        total += 1
        wanted = expect.get("first_failure")
        if isinstance(got, str):
            continue
        if wanted is None:
            good += got.first_failure is None
        elif got.first_failure is not None:
            call = got.calls[got.first_failure]
            good += (call.fn, call.rv) == (wanted["fn"], wanted["rv"])
    return good, total


SPY_BLOCK = """{n}: C_SignInit
2024-11-14 13:25:13.497
[in] hSession = 0x5fb130
pMechanism->type=CKM_ECDSA
[in] hKey = 0x2
Returned:  0 CKR_OK

{m}: C_Sign
2024-11-14 13:25:13.498
[in] hSession = 0x5fb130
[in] pData[ulDataLen] 00007ffd2709bdf0 / 32
    00000000  29 B0 E7 87 82 71 64 5F FF B7 EE C7 DB 4A 74 73  )....qd_.....Jts
    00000010  29 B0 E7 87 82 71 64 5F FF B7 EE C7 DB 4A 74 73  )....qd_.....Jts
[out] pSignature[ulSignatureLen] 00007ffd2709be00 / 64
Returned:  0 CKR_OK

"""
FAILING = """{n}: C_Sign
2024-11-14 13:25:14.000
[in] hSession = 0x5fb130
[in] pData[ulDataLen] 00007ffd2709bdf0 / 32
Returned:  5 CKR_GENERAL_ERROR
"""
CHILD = """
import resource, sys, time
from harness.explain.explanation import explain_file
start = time.perf_counter()
e = explain_file(__import__("pathlib").Path(sys.argv[1]))
took = time.perf_counter() - start
call = e.calls[e.first_failure] if e.first_failure is not None else None
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, e.total_calls,
      call.fn if call else None, call.rv if call else None)
"""


def speed(megabytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "big-spy.log"
        target = megabytes * 1_000_000
        with log.open("w") as out:
            out.write("*************** OpenSC PKCS#11 spy *****************\n")
            n = 0
            written = 0
            while written < target:
                block = "".join(SPY_BLOCK.format(n=n + 2 * i, m=n + 2 * i + 1)
                                for i in range(1000))
                out.write(block)
                written += len(block)
                n += 2000
            out.write(FAILING.format(n=n))
        size = log.stat().st_size
        done = subprocess.run([sys.executable, "-c", CHILD, str(log)], capture_output=True,
                              text=True, cwd=ROOT, timeout=600)
        if done.returncode != 0:
            print(f"  speed: the child failed: {done.stderr.strip()[-300:]}")
            return
        took, rss_kb, calls, fn, rv = done.stdout.split()
        print(f"  {size / 1e6:.0f} MB pkcs11-spy log ({calls} calls in the window read): "
              f"{float(took):.1f} s, "
              f"peak RSS {int(rss_kb) / 1024:.0f} MB; first failing call {fn} {rv} "
              f"(target: < 10 s, memory bounded)")
        binary = Path(tmp) / "binary.log"
        binary.write_bytes(bytes(range(256)) * 4096)
        for path in ("/dev/zero", str(binary)):
            start = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "harness.cli", "explain", path],
                                 capture_output=True, text=True, cwd=ROOT, timeout=120)
            lines = run.stderr.strip().splitlines()
            print(f"  {Path(path).name}: exit {run.returncode}, {len(lines)} line(s) on stderr, "
                  f"{time.perf_counter() - start:.1f} s: {lines[0] if lines else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    print("field corpus (tests/data/field):")
    for part, show in (("develop", True), ("heldout", False)):
        good, total = score_part(part, show)
        print(f"  {part}: {good}/{total} right ({100 * good / total:.0f} %)")
    good, total = score_heldout_logs()
    print(f"tests/data/explain/heldout (logs made here): {good}/{total} right "
          f"({100 * good / total:.0f} %)")
    print("speed and safety:")
    speed(args.megabytes)


if __name__ == "__main__":
    main()
