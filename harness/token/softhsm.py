"""The embedded default: a throw-away SoftHSM2 token in its own directory.

Each instance writes its own softhsm2.conf and token directory, and every
process that should see the token gets SOFTHSM2_CONF pointing there, so the
user's own SoftHSM tokens (~/.config/softhsm2, /var/lib/softhsm) are never
opened, let alone changed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import TokenError, ToolMissing
from harness.installed import SOFTHSM, find_library


def find_softhsm_module() -> Path:
    """Path of libsofthsm2.so, or a ToolMissing that says how to install it."""
    module = find_library(*SOFTHSM)
    if module is not None:
        return module
    raise ToolMissing(
        "SoftHSM2 module libsofthsm2.so not found: install softhsm2 "
        "(scripts/setup-system.sh) or pass --p11-module=PATH"
    )


@dataclass(frozen=True)
class SoftHSMToken:
    """One initialised token inside a TemporarySoftHSM."""

    label: str
    pin: str = field(repr=False)


class TemporarySoftHSM:
    """A SoftHSM2 configuration and token store that lives in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.module = find_softhsm_module()
        self.tokendir = directory / "tokens"
        self.conf = directory / "softhsm2.conf"
        self.tokendir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"directories.tokendir = {self.tokendir}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n"
        )

    @property
    def env(self) -> dict[str, str]:
        """Variables that make SoftHSM2 (in any process) use this store only."""
        return {"SOFTHSM2_CONF": str(self.conf)}

    def init_token(self, label: str, pin: str | None = None) -> SoftHSMToken:
        """Initialise a new token in a free slot of this store."""
        util = shutil.which("softhsm2-util")
        if util is None:
            raise ToolMissing("softhsm2-util not found: install softhsm2")
        pin = pin or secrets.token_hex(4)
        so_pin = secrets.token_hex(8)
        proc = subprocess.run(
            [util, "--init-token", "--free", "--label", label,
             "--pin", pin, "--so-pin", so_pin],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise TokenError(
                f"softhsm2-util could not initialise token {label!r}: "
                f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
            )
        return SoftHSMToken(label=label, pin=pin)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
