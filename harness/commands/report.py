"""`p11tls report RESULTS.json [-o DIR]`: matrix.html and matrix.md from a results file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.commands import run_command
from harness.reports.compare import failed_cases
from harness.reports.files import load_results, write_reports


def report_main(argv: Sequence[str] | None = None) -> int:
    """`p11tls report RESULTS.json [-o DIR]`: write matrix.html and matrix.md;
    exit 1 when a case failed unexpectedly."""
    parser = argparse.ArgumentParser(
        prog="p11tls report",
        description="Render matrix.html and matrix.md from a results.json. Exit status 1 "
        "when a case failed (not an expected failure), else 0.")
    parser.add_argument("results", type=Path, help="a results.json (from a run or a merge)")
    parser.add_argument("-o", "--out-dir", type=Path, default=None,
                        help="where to write the reports (default: the results file's directory)")

    def run(args: argparse.Namespace) -> int:
        records = load_results(args.results)
        out_dir = args.out_dir if args.out_dir is not None else args.results.parent
        paths = write_reports(records, out_dir, log_base=args.results.parent)
        print("wrote " + ", ".join(str(p) for p in paths))
        failed = failed_cases(records)
        if failed:
            print(f"p11tls report: {len(failed)} case{'' if len(failed) == 1 else 's'} failed: "
                  + ", ".join(r.case_id for r in failed[:10])
                  + (", ..." if len(failed) > 10 else ""), file=sys.stderr)
        return 1 if failed else 0

    return run_command(parser, run, argv)
