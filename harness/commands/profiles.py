"""`p11tls profiles [PROFILE]`: the shipped emulation profiles, or one checked and shown."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from harness.errors import HarnessError
from harness.interposer.profile import Profile, load_profile, shipped_profiles


def profiles_main(argv: Sequence[str]) -> int:
    """`p11tls profiles [PROFILE]`: list the shipped emulation profiles, or show
    one (shipped name or a TOML path: also checks a profile of your own).

    Exit status 0, or 2 with one line on stderr for a bad profile or argument.
    """
    parser = argparse.ArgumentParser(
        prog="p11tls profiles",
        description="Emulated-token profiles: the interposer imitates a constrained token's "
        "reported behaviour on top of the module under test. Results under a profile are "
        "an emulation, never results of the device.",
    )
    parser.add_argument("profile", nargs="?",
                        help="show one profile: a shipped name or a path to a TOML file")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    try:
        if args.profile is None:
            sys.stdout.write(_list_text(shipped_profiles()))
        else:
            sys.stdout.write(_detail_text(load_profile(args.profile)))
    except HarnessError as exc:
        print(f"p11tls profiles: {exc}", file=sys.stderr)
        return 2
    return 0


def _list_text(profiles: Sequence[Profile]) -> str:
    lines = [("Shipped emulation profiles (each is an emulation on the module under test, "
             "not the device):"), ""]
    width = max((len(p.name) for p in profiles), default=0)
    for p in profiles:
        lines.append(f"  {p.name.ljust(width)}  emulates {p.emulates}")
        lines.append(f"  {''.ljust(width)}  source: {p.source}")
    lines += ["", ("Use one with --p11-profile NAME, or --p11-profile PATH for your own TOML "
              "file; `p11tls profiles NAME` shows what it does.")]
    return "\n".join(lines) + "\n"


def _detail_text(p: Profile) -> str:
    lines = [f"{p.name}: an emulation, not the device", f"  emulates: {p.emulates or '-'}",
             f"  source:   {p.source or '-'}", f"  file:     {p.path}", "  behaviour:"]
    lines += [f"    - {line}" for line in p.describe()]
    lines.append("  interposer settings:")
    lines += [f"    {line}" for line in p.interposer_lines()] or ["    (none)"]
    return "\n".join(lines) + "\n"
