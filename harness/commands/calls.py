"""`p11tls calls FILE`: an interposer record file (calls.jsonl) as a table."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from harness.commands import run_command
from harness.interposer.calls import format_calls_table, load_calls


def calls_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="p11tls calls", description="Print a record file of the interposer as a table.")
    parser.add_argument("file", type=Path, help="a calls.jsonl from reports/logs/CASE/")

    def run(args: argparse.Namespace) -> int:
        print(format_calls_table(load_calls(args.file)))
        return 0

    return run_command(parser, run, argv)
