"""`p11tls diff OLD.json NEW.json`: the cells that changed, regressions first."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from harness.commands import run_command
from harness.reports.compare import diff
from harness.reports.files import load_results


def diff_main(argv: Sequence[str] | None = None) -> int:
    """`p11tls diff OLD.json NEW.json`: exit 1 when a case that was ok now fails."""
    parser = argparse.ArgumentParser(
        prog="p11tls diff",
        description="List the cells that changed between two results files, regressions "
        "first. Exit status 1 when a case that was ok now fails, else 0.")
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)

    def run(args: argparse.Namespace) -> int:
        result = diff(load_results(args.old), load_results(args.new))
        print(result.format())
        return 1 if result.has_regression else 0

    return run_command(parser, run, argv)
