"""`p11tls show [RESULTS.json] [--wide]`: the matrix of a results file, fitted
to the terminal; exit 1 when a case failed unexpectedly."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

from harness.commands import run_command
from harness.reports.compare import failed_cases
from harness.reports.files import load_results
from harness.reports.terminal import terminal_matrix


def show_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="p11tls show", description="Print the matrix of a results.json "
        "(exit status 1 when a case failed, not an expected failure).")
    parser.add_argument("results", type=Path, nargs="?", default=Path("reports/results.json"))
    parser.add_argument("--wide", action="store_true",
                        help="one table, however wide (default: fit the terminal's width, "
                        "COLUMNS, 80 when not a terminal)")

    def run(args: argparse.Namespace) -> int:
        records = load_results(args.results)
        width = None if args.wide else shutil.get_terminal_size((80, 24)).columns
        print(terminal_matrix(records, width))
        return 1 if failed_cases(records) else 0

    return run_command(parser, run, argv)
