"""Per-signature cost of the recording interposer against the direct module.

Signs with a P-256 key on a throw-away SoftHSM token through python-pkcs11
(C_SignInit, C_Sign size query, C_Sign: three recorded calls per signature),
once loading SoftHSM directly and once through the interposer, each in its own
process, alternating rounds so drift hits both alike. Prints the medians.

    .venv/bin/python bench/bench_interposer_calls.py [--signatures 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKEN, PIN, CALLS_PER_SIGNATURE = "bench", "1234", 3


def child(module: str, args: dict[str, Any]) -> dict[str, Any]:
    """Runs in the child process: set up the key, or time the signatures."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    from pkcs11.util.ec import encode_named_curve_parameters

    token = pkcs11.lib(module).get_token(token_label=TOKEN)
    with token.open(rw=True, user_pin=PIN) as session:
        if args["mode"] == "setup":
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True)
            params.generate_keypair(store=True, label="ec")
            return {}
        key: Any = session.get_key(label="ec", object_class=ObjectClass.PRIVATE_KEY)
        data = bytes(32)
        for _ in range(50):  # warm up caches and the interposer's key cache
            key.sign(data, mechanism=Mechanism.ECDSA)
        times = []
        for _ in range(args["signatures"]):
            start = time.perf_counter_ns()
            key.sign(data, mechanism=Mechanism.ECDSA)
            times.append(time.perf_counter_ns() - start)
    return {"times_ns": times}


def run_child(module: Path, env: dict[str, str], args: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(module), json.dumps(args)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"benchmark child failed ({module}):\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signatures", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per mode")
    options = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from harness.interposer import CONF_ENV, build_interposer, write_interposer_config
    from harness.token.softhsm import TemporarySoftHSM

    interposer = build_interposer()
    with tempfile.TemporaryDirectory(prefix="p11tls-bench-") as tmp:
        hsm = TemporarySoftHSM(Path(tmp) / "softhsm")
        hsm.init_token(TOKEN, PIN)
        base = {k: v for k, v in os.environ.items() if k != CONF_ENV} | hsm.env
        record = Path(tmp) / "record.jsonl"
        interposed_env = base | write_interposer_config(hsm.module, record, Path(tmp) / "conf")
        run_child(hsm.module, base, {"mode": "setup"})

        samples: dict[str, list[int]] = {"direct": [], "interposer": []}
        for _ in range(options.rounds):
            for mode, module, env in (("direct", hsm.module, base),
                                      ("interposer", interposer, interposed_env)):
                out = run_child(module, env, {"mode": "time", "signatures": options.signatures})
                samples[mode].extend(out["times_ns"])
        lines = len(record.read_text().splitlines())

    direct = statistics.median(samples["direct"]) / 1000
    through = statistics.median(samples["interposer"]) / 1000
    overhead = through - direct
    n = len(samples["direct"])
    print(f"P-256 ECDSA via python-pkcs11, SoftHSM {hsm.module}")
    print(f"{n} signatures per mode ({options.rounds} alternating rounds), medians:")
    print(f"  direct       {direct:8.1f} us per signature")
    print(f"  interposer   {through:8.1f} us per signature")
    print(f"  overhead     {overhead:8.1f} us per signature ({overhead / direct:+.1%}), "
          f"{overhead / CALLS_PER_SIGNATURE:.1f} us per recorded call")
    print(f"  record       {lines} lines written")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], json.loads(sys.argv[3]))))
    else:
        main()
