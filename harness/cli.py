"""`p11tls`: the command-line entry point.

Subcommands hand their arguments to the module that does the work; every
HarnessError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.errors import HarnessError


def _matrix(args: argparse.Namespace) -> int:
    """The matrix of a results file; exit 1 when a case failed unexpectedly."""
    from harness.compare import failed_cases, load_results
    from harness.report import terminal_matrix

    records = load_results(args.results)
    print(terminal_matrix(records))
    return 1 if failed_cases(records) else 0


def _calls(args: argparse.Namespace) -> int:
    from harness.calls import format_calls_table, load_calls

    print(format_calls_table(load_calls(args.file)))
    return 0


MATRIX_MODULE = "harness.matrix_test"  # the packaged matrix that `p11tls run` collects


def run_parser() -> argparse.ArgumentParser:
    """`p11tls run`'s own options: the matrix's settings (harness.config.OPTIONS);
    every other argument goes to pytest as it is (-m, -k, -x, -n 2, ...)."""
    from harness.config import OPTIONS

    parser = argparse.ArgumentParser(
        prog="p11tls run", allow_abbrev=False,
        description="Run the TLS matrix (pytest on the packaged harness.matrix_test) with "
        "these settings; prints the matrix, writes the reports, exits with pytest's status.",
        epilog="Any other argument is handed to pytest: -m tls12, -k gnutls, -x, -n 2.")
    for option in OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        env = f" [env {option.env}]" if option.env else ""
        if option.flag:
            parser.add_argument(flag, action="store_const", const="yes", help=option.help + env)
        else:
            parser.add_argument(flag, action="append" if option.repeatable else "store",
                                metavar="VALUE", help=option.help + env)
    return parser


def run_main(argv: Sequence[str]) -> int:
    """`p11tls run [--p11-… options] [pytest arguments]`: the packaged matrix,
    for people who do not use pytest; the same options and exit status."""
    import pytest

    _, rest = run_parser().parse_known_args(list(argv))
    typo = next((a for a in rest if a.startswith(("--p11-", "--java"))), None)
    if typo is not None:
        print(f"p11tls run: unknown option {typo.split('=')[0]}: see p11tls run --help",
              file=sys.stderr)
        return 2
    # the plugin arrives by its entry point; load it by name where autoload is off
    plugin = ["-p", "harness.plugin"] if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") else []
    # no .pytest_cache beside the installed package or in the caller's directory
    return int(pytest.main([*plugin, "-p", "no:cacheprovider", "--pyargs", MATRIX_MODULE,
                            *argv]))


# Subcommands whose module parses its own arguments: name -> (module, function, help).
DELEGATED = {
    "run": ("harness.cli", "run_main",
            "run the TLS matrix (the packaged pytest matrix) with --p11-… options"),
    "cleanup": ("harness.cleanup", "cleanup_main",
                "list what earlier runs left on a named token; delete it with --yes"),
    "explain": ("harness.explain", "explain_main",
                ("say what went wrong in a PKCS#11 call log (own records, pkcs11-spy, "
                 "p11-kit, pkcs11-logger, OpenSC debug)")),
    "profiles": ("harness.profile", "profiles_main",
                 "list the shipped emulation profiles, or check and show one"),
    "sweep": ("harness.sweep", "sweep_main",
              "grow the TLS 1.2 transcript and find the largest input the token signs"),
    "token-sweep": ("harness.token_sweep", "token_sweep_main",
                    "sign growing inputs with each combined mechanism on the token, no TLS"),
    "report": ("harness.compare", "report_main",
               "render matrix.html and matrix.md from a results.json"),
    "merge": ("harness.compare", "merge_main",
              "merge results.json files from several lab hosts into one"),
    "diff": ("harness.compare", "diff_main",
             "list changed cells between two results.json, regressions first (exit 1 on one)"),
    "provision": ("harness.lab_provision", "provision_main",
                  "put the matrix's keys on a lab token once (p11tls-lab-*), or --remove them"),
    "doctor": ("harness.doctor", "doctor_main",
               "what a module and token offer for TLS client auth, and what clients will ask"),
    "facts": ("harness.facts", "facts_main",
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
    show = sub.add_parser("show", help="print the matrix of a results.json "
                          "(exit 1 when a case failed)")
    show.add_argument("results", type=Path, nargs="?", default=Path("reports/results.json"))
    show.set_defaults(func=_matrix)
    calls = sub.add_parser("calls", help="print a record file of the interposer as a table")
    calls.add_argument("file", type=Path, help="a calls.jsonl from reports/logs/CASE/")
    calls.set_defaults(func=_calls)
    for name, (_, _, text) in DELEGATED.items():
        delegated = sub.add_parser(name, help=text, add_help=False)
        delegated.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATED:
            module_name, function, _ = DELEGATED[argv[0]]
            module = importlib.import_module(module_name)
            return int(getattr(module, function)(argv[1:]))
        args = parser.parse_args(argv)
        try:
            return int(args.func(args))
        except HarnessError as exc:
            print(f"p11tls {args.command}: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `p11tls explain LOG | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
