"""`p11tls`: the command-line entry point.

Subcommands hand their arguments to the module that does the work; every
HarnessError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.errors import HarnessError


def _matrix(args: argparse.Namespace) -> int:
    from harness.record import read_results
    from harness.report import terminal_matrix

    print(terminal_matrix(read_results(args.results)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p11tls",
        description="PKCS#11 TLS client-authentication harness. Run the matrix with "
        "pytest (./run matrix); these commands work on its results and logs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the matrix of a results.json")
    show.add_argument("results", type=Path, nargs="?", default=Path("reports/results.json"))
    show.set_defaults(func=_matrix)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except HarnessError as exc:
        print(f"p11tls {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
