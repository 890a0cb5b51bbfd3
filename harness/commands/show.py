"""`p11tls show [RESULTS.json]`: the matrix of a results file; exit 1 when a
case failed unexpectedly."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from harness.commands import run_command
from harness.reports.compare import failed_cases, load_results
from harness.reports.terminal import terminal_matrix


def show_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="p11tls show", description="Print the matrix of a results.json "
        "(exit status 1 when a case failed, not an expected failure).")
    parser.add_argument("results", type=Path, nargs="?", default=Path("reports/results.json"))

    def run(args: argparse.Namespace) -> int:
        records = load_results(args.results)
        print(terminal_matrix(records))
        return 1 if failed_cases(records) else 0

    return run_command(parser, run, argv)
