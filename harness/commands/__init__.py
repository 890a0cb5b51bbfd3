"""The `p11tls` commands: one module per command, each its argparse face over the library.

`harness.cli` dispatches `p11tls NAME` to `harness.commands.NAME` (dashes as
underscores) lazily, so a command loads only what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from harness.errors import HarnessError


def run_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
                argv: Sequence[str] | None) -> int:
    """Parse `argv` and run; usage errors exit 2 (argparse printed why), a
    HarnessError is one line on stderr and exit status 2."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (argparse printed why) and --help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return run(args)
    except HarnessError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
