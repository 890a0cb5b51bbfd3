"""The run's OpenSC environment (harness.token.opensc_conf) for a named OpenSC
module: the harness process and every client load OpenSC with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.run.config import Settings
from harness.token.opensc_conf import opensc_environment
from harness.token.probe import ask


def run_opensc_environment(settings: Settings, workdir: Path) -> dict[str, str]:
    """{} unless the module is OpenSC's and --p11-opensc-cache is not no."""
    assert settings.module is not None and settings.token_label is not None
    module, label = settings.module, settings.token_label

    def describe(env: dict[str, str]) -> Any:
        return ask("info", [str(module), label], env=env)

    return opensc_environment(module, label, workdir / "opensc", settings.opensc_cache,
                              describe)
