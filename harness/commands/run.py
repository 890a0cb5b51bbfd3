"""`p11tls run [--p11-… options] [pytest arguments]`: the packaged matrix, for
people who do not use pytest; the same options, reports and exit status."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from harness.run.config import OPTIONS

MATRIX_MODULE = "harness.matrix_test"  # the packaged matrix that `p11tls run` collects


def run_parser() -> argparse.ArgumentParser:
    """`p11tls run`'s own options: the matrix's settings (harness.run.config.OPTIONS);
    every other argument goes to pytest as it is (-m, -k, -x, -n 2, ...)."""
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
    import pytest  # only this command needs pytest itself

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
