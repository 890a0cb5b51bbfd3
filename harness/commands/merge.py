"""`p11tls merge A.json B.json ... -o ALL.json`: one results file from several lab hosts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.commands import run_command
from harness.errors import ConfigError
from harness.reports.compare import merge
from harness.reports.files import load_results, write_results


def merge_main(argv: Sequence[str] | None = None) -> int:
    """`p11tls merge A.json B.json ... -o ALL.json`."""
    parser = argparse.ArgumentParser(
        prog="p11tls merge",
        description="Merge results files from several lab hosts into one (one table per "
        "host/module). Cases without a host are tagged with their file's name.")
    parser.add_argument("results", type=Path, nargs="+", help="results files, one per host")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the merged file")
    parser.add_argument("--replace", action="store_true",
                        help="a case in two files (same host, module, token, profile): keep "
                        "the later file's instead of refusing")

    def run(args: argparse.Namespace) -> int:
        loaded = [load_results(p) for p in args.results]
        notes: list[str] = []
        merged = merge(loaded, [str(p) for p in args.results], notes, refuse=not args.replace)
        for note in notes:
            print(f"p11tls merge: {note}", file=sys.stderr)
        try:
            write_results(merged, args.output)
        except OSError as exc:
            raise ConfigError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"wrote {args.output}: {len(merged)} cases from {len(args.results)} files")
        return 0

    return run_command(parser, run, argv)
