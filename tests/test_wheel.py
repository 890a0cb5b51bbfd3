"""Installed, not only cloned: the wheel built from this tree, installed into a
fresh virtual environment (its dependencies from the index pip uses here),
runs the packaged matrix from outside the source tree — `p11tls run` and
`pytest --pyargs harness.matrix_test` — and builds the interposer and the Java
client from the sources it ships.

One wheel and one venv per test session (about a minute the first time);
marker `wheel` (`-m "not wheel"` leaves it out).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.wheel


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what the build reads (no build/ or
    egg-info written into the shared work tree)."""
    src = tmp_path_factory.mktemp("wheel-src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.class")
    for name in ("harness", "java", "go"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "--disable-pip-version-check", "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = out.glob("pkcs11_tls_harness-*.whl")
    return found


@pytest.fixture(scope="session")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and its dependencies, nothing from this one."""
    home = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, timeout=120)
    installed = subprocess.run([str(home / "bin" / "pip"), "install", "-q",
                                "--disable-pip-version-check", str(wheel)],
                               capture_output=True, text=True, timeout=600, check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return home


def installed_env(tmp: Path) -> dict[str, str]:
    """The environment of someone who installed the wheel: no source tree on
    the path, a cache of their own (so the interposer and the Java client are
    built from the installed sources), no harness settings of this run."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PKCS11_", "P11TLS_", "PYTEST_", "PYTHON", "VIRTUAL_ENV"))
           and k != "SOFTHSM2_CONF"}
    env.update(XDG_CACHE_HOME=str(tmp / "cache"), P11TLS_STATE_DIR=str(tmp / "state"))
    return env


def test_the_wheel_holds_the_package_the_matrix_and_the_sources_but_not_the_tests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "harness").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert source - names == set()  # every module, data file, profile, interposer.c
    assert "harness/matrix_test.py" in names
    assert {f"harness/java_src/{p.name}" for p in (ROOT / "java").glob("*.java")} <= names
    assert {f"harness/go_src/{p.name}" for p in (ROOT / "go").glob("*.go")} <= names
    assert not any(n.startswith("tests/") for n in names)  # the suite stays in the tree
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "p11tls = harness.cli:main" in text and "p11tls = harness.plugin" in text


def test_installed_p11tls_run_and_pytest_pyargs_run_the_matrix(venv, tmp_path):
    env = installed_env(tmp_path)
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import harness; print(harness.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the installed copy, not ROOT

    ran = subprocess.run([str(venv / "bin" / "p11tls"), "run", "--p11-clients", "gnutls",
                          "--p11-keys", "p256", "--p11-reports", "run-reports"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr
    ok = check_reports(tmp_path / "run-reports", client="gnutls")
    assert ok == 4  # generate, import × TLS 1.2, 1.3
    assert list((tmp_path / "cache" / "p11tls").glob("p11tls-interposer-*.so")), \
        "the interposer was not built from the installed source"
    assert not (tmp_path / ".pytest_cache").exists()

    pyargs = subprocess.run([str(venv / "bin" / "pytest"), "--pyargs", "harness.matrix_test",
                             "-p", "no:cacheprovider", "--p11-clients", "java",
                             "--p11-keys", "p256", "-m", "generate",
                             "--p11-reports", "pyargs-reports"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert pyargs.returncode == 0, pyargs.stdout[-3000:] + pyargs.stderr
    assert check_reports(tmp_path / "pyargs-reports", client="java") == 2
    assert list((tmp_path / "cache" / "p11tls").glob("java-*/P11TlsClient.class")), \
        "the Java client was not compiled from the installed source"

    # negative control: the same installed command fails on a bad option, one line
    bad = subprocess.run([str(venv / "bin" / "p11tls"), "run", "--p11-keys", "p999"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert bad.returncode not in (0, 5) and "p999" in bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def check_reports(reports: Path, client: str) -> int:
    """The run's reports exist; the number of ok cases of `client`."""
    records = json.loads((reports / "results.json").read_text())["cases"]
    assert (reports / "matrix.html").is_file() and (reports / "matrix.md").is_file()
    assert records and all(r["client"] == client for r in records)
    ok = [r for r in records if r["verdict"] == "passed" and r.get("signature_scheme")]
    assert len(ok) == len(records), [(r["case_id"], r["verdict"]) for r in records]
    return len(ok)
