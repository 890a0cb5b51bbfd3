"""Compiling the bundled Java client (java/P11TlsClient.java) once per source."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.clients.java.jdk import JDK, MIN_JAVA
from harness.errors import HarnessError

MAIN_CLASS = "P11TlsClient"


def find_java_sources() -> Path:
    """The directory holding P11TlsClient.java.

    A source checkout has it at the repository root (java/); an installed
    package has it as package data in harness/java_src/.
    """
    package = Path(__file__).resolve().parents[2]  # harness/
    for candidate in (package.parent / "java", package / "java_src"):
        if (candidate / f"{MAIN_CLASS}.java").is_file():
            return candidate
    raise HarnessError(
        f"{MAIN_CLASS}.java not found in {package.parent / 'java'} or {package / 'java_src'}: "
        "the installation is incomplete; reinstall pkcs11-tls-harness"
    )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "p11tls"


def build_classes(jdk: JDK, sources: Path, cache_dir: Path | None = None) -> Path:
    """Compile `sources` once into cache_dir/java-<hash of the sources>.

    The hash covers every .java file, so an edited source gets a new directory.
    javac writes into a private temporary directory that is renamed into place,
    so parallel workers never see half-written classes.
    """
    cache_dir = cache_dir or default_cache_dir()
    files = sorted(sources.glob("*.java"))
    if not files:
        raise HarnessError(f"no .java files in {sources}")
    digest = hashlib.sha256(f"release={MIN_JAVA}\n".encode())
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    target = cache_dir / f"java-{digest.hexdigest()[:16]}"
    if (target / f"{MAIN_CLASS}.class").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=cache_dir))
    try:
        proc = subprocess.run(
            [str(jdk.javac), "--release", str(MIN_JAVA), "-encoding", "UTF-8",
             "-d", str(work), *map(str, files)],
            capture_output=True, text=True, timeout=180, check=False,
        )
        if proc.returncode != 0:
            raise HarnessError(
                f"javac could not compile {sources}: {(proc.stderr or proc.stdout).strip()[:2000]}"
            )
        try:
            os.rename(work, target)
        except OSError:
            if not (target / f"{MAIN_CLASS}.class").is_file():
                raise
            # another worker finished first; its classes are the same
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target

