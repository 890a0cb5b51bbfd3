"""Where a run writes its reports: its own directory, so two runs with the
same --p11-reports keep both results and no log is appended across runs.

    reports/runs/<UTC time>-<pid>/   results.json, matrix.html, matrix.md, logs/CASE/…
    reports/latest -> runs/<id>      the run that finished last
    reports/logs   -> latest/logs
    reports/results.json, matrix.html, matrix.md   copies of the latest run's

The top-level files stay where the README's commands (p11tls show/report)
and CI look for them; each is replaced atomically, so a reader sees one
run's file whole, never a mix.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

RUNS = "runs"
TOP_LEVEL = ("results.json", "matrix.html", "matrix.md")


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"


def run_dir(reports: Path, run_id: str) -> Path:
    return reports / RUNS / run_id


def _symlink(path: Path, target: str) -> None:
    """path -> target, replaced atomically (a rename over the old link)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def publish(reports: Path, directory: Path) -> None:
    """Make `directory` the latest run: the symlinks and the top-level copies."""
    _symlink(reports / "latest", os.path.relpath(directory, reports))
    logs = reports / "logs"
    if logs.is_dir() and not logs.is_symlink():  # logs of a harness before run directories
        shutil.move(str(logs), str(reports / RUNS / "before-run-directories"))
    if not logs.is_symlink() or os.readlink(logs) != "latest/logs":
        _symlink(logs, "latest/logs")
    for name in TOP_LEVEL:
        source = directory / name
        if source.is_file():
            tmp = reports / f".{name}.{os.getpid()}.tmp"
            shutil.copyfile(source, tmp)
            os.replace(tmp, reports / name)
