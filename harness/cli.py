"""`p11tls`: the command-line entry point.

`p11tls NAME ARGS` hands ARGS to the command's own module under
harness/commands/, imported only when that command runs; every HarnessError
becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module under harness.commands, its entry function, help)
COMMANDS = {
    "run": ("run", "run_main",
            "run the TLS matrix (the packaged pytest matrix) with --p11-… options"),
    "show": ("show", "show_main", "print the matrix of a results.json (exit 1 when a case failed)"),
    "calls": ("calls", "calls_main", "print a record file of the interposer as a table"),
    "cleanup": ("cleanup", "cleanup_main",
                "list what earlier runs left on a named token; delete it with --yes"),
    "explain": ("explain", "explain_main",
                ("say what went wrong in a PKCS#11 call log (own records, pkcs11-spy, "
                 "p11-kit, pkcs11-logger, OpenSC debug)")),
    "profiles": ("profiles", "profiles_main",
                 "list the shipped emulation profiles, or check and show one"),
    "sweep": ("sweep", "sweep_main",
              "grow the TLS 1.2 transcript and find the largest input the token signs"),
    "token-sweep": ("token_sweep", "token_sweep_main",
                    "sign growing inputs with each combined mechanism on the token, no TLS"),
    "report": ("report", "report_main", "render matrix.html and matrix.md from a results.json"),
    "merge": ("merge", "merge_main", "merge results.json files from several lab hosts into one"),
    "diff": ("diff", "diff_main",
             "list changed cells between two results.json, regressions first (exit 1 on one)"),
    "provision": ("provision", "provision_main",
                  "put the matrix's keys on a lab token once (p11tls-lab-*), or --remove them"),
    "doctor": ("doctor", "doctor_main",
               "what a module and token offer for TLS client auth, and what clients will ask"),
    "facts": ("facts", "facts_main",
              "write the facts a run measured on versions that have none yet, as TOML"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p11tls",
        description="PKCS#11 TLS client-authentication harness. Run the matrix with "
        "`p11tls run` (or pytest: ./run matrix); the other commands work on its results, "
        "logs and tokens.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, _, text) in COMMANDS.items():
        command = sub.add_parser(name, help=text, add_help=False)
        command.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] not in COMMANDS:
            build_parser().parse_args(argv)  # usage, or --help; exits
            return 2
        module_name, function, _ = COMMANDS[argv[0]]
        # lazy: `p11tls show` must not load pytest, a PKCS#11 module or the Java client
        module = importlib.import_module(f"harness.commands.{module_name}")
        return int(getattr(module, function)(argv[1:]))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `p11tls explain LOG | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
