"""Named modules: `--p11-module NAME` for a real token the harness brings up
itself and throws away (today `tpm2`: tpm2-pkcs11 on a software TPM).

A named module is a context manager that yields a `ModuleSetup`: the module,
the token it made, its PIN, the environment every process loading the module
needs, the versions its facts are keyed to, and what to do between cases.
The runner opens it instead of the embedded SoftHSM2 token.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

# name -> "module:function" returning the context manager (imported on use only)
NAMED_MODULES: dict[str, str] = {
    "tpm2": "harness.token.tpm2:tpm2_module",
}


@dataclass(frozen=True)
class ModuleSetup:
    """A running throw-away token of a named module."""

    name: str  # as given to --p11-module: tpm2
    description: str  # for the report header: what runs below the module
    module: Path
    token_label: str
    pin: str = field(repr=False)
    env: dict[str, str] = field(default_factory=dict)  # for this process and every client
    versions: dict[str, str | None] = field(default_factory=dict)  # harness.versions components
    # Between cases: e.g. flush what clients left loaded in a TPM without a
    # resource manager. The runner logs its own sessions out first.
    after_case: Callable[[], object] = field(default=lambda: None, repr=False, compare=False)
    # The module keeps what a logged-in session loaded until logout: the runner
    # must not hold its session while a client runs.
    release_sessions: bool = False
    device: Any = field(default=None, repr=False, compare=False)  # e.g. the SoftwareTPM


def is_named(value: str) -> bool:
    return value in NAMED_MODULES


def open_named_module(name: str, workdir: Path) -> AbstractContextManager[ModuleSetup]:
    """The context manager that starts the named module's token in `workdir`."""
    if name not in NAMED_MODULES:
        raise ConfigError(f"unknown named module {name!r}: choose one of "
                          f"{', '.join(NAMED_MODULES)} or give a module's .so file")
    module_name, function = NAMED_MODULES[name].split(":")
    factory = getattr(importlib.import_module(module_name), function)
    manager: AbstractContextManager[ModuleSetup] = factory(workdir)
    return manager
