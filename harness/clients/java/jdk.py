"""Finding JDKs: the default one (--java, JAVA_HOME, PATH) and every other
installed JDK (each `--java`, /usr/lib/jvm/*), each with its feature version."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ToolMissing

MIN_JAVA = 11
JDK_HINT = "install a JDK >= 11 (openjdk-17-jdk-headless) or set JAVA_HOME / --java"
# Where distributions install JDKs side by side (Debian, Ubuntu, Fedora).
JVM_DIRS: tuple[Path, ...] = (Path("/usr/lib/jvm"),)


@dataclass(frozen=True)
class JDK:
    home: Path
    java: Path
    javac: Path
    version: str  # java.runtime.version, e.g. 17.0.15+6-Debian-1deb12u1
    runtime: str  # "OpenJDK Runtime Environment"
    feature: int  # 17


def _home_from(path: Path) -> Path:
    """A JDK home from a home directory or from a bin/java(c) path."""
    if path.is_file() or path.name in ("java", "javac"):
        return path.resolve().parent.parent
    return path


def find_jdk(java_home: Path | str | None = None) -> JDK:
    """The JDK from `java_home`, else $JAVA_HOME, else `javac` on PATH.

    Raises ToolMissing naming what is missing and how to get it.
    """
    if java_home:
        home, origin = _home_from(Path(java_home)), "--java"
    elif os.environ.get("JAVA_HOME"):
        home, origin = Path(os.environ["JAVA_HOME"]), "JAVA_HOME"
    else:
        found = shutil.which("javac")
        if found is None:
            raise ToolMissing(f"javac not found: {JDK_HINT}")
        home, origin = Path(found).resolve().parent.parent, "PATH"
    javac, java = home / "bin" / "javac", home / "bin" / "java"
    if not os.access(javac, os.X_OK):
        raise ToolMissing(f"javac not found in {home} (from {origin}): {JDK_HINT}")
    if not os.access(java, os.X_OK):
        raise ToolMissing(f"java not found in {home} (from {origin}): {JDK_HINT}")
    try:
        proc = subprocess.run([str(java), "-version"], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolMissing(f"{java} -version failed ({exc}): {JDK_HINT}") from None
    feature, version, runtime = _parse_java_version(proc.stderr)
    if feature is None:
        raise ToolMissing(f"cannot read the version of {java}: {proc.stderr.strip()[:200]!r}")
    if feature < MIN_JAVA:
        raise ToolMissing(f"{java} is Java {feature} (from {origin}), too old: {JDK_HINT}")
    return JDK(home=home, java=java, javac=javac, version=version, runtime=runtime,
               feature=feature)


def _parse_java_version(text: str) -> tuple[int | None, str, str]:
    first = re.search(r'version "([^"]+)"', text)
    if first is None:
        return None, "", ""
    short = first.group(1)
    parts = short.split(".")
    feature = int(parts[1] if parts[0] == "1" else re.match(r"\d+", parts[0]).group())  # type: ignore[union-attr]
    build = re.search(r"^(.*Runtime Environment.*?)\s*\(build ([^)]+)\)", text, re.MULTILINE)
    if build:
        return feature, build.group(2), build.group(1).strip()
    return feature, short, ""


def discover_jdks(java_homes: Sequence[str] = ()) -> tuple[JDK, ...]:
    """Every usable JDK, the default one first, each home once.

    Given `--java` homes, exactly those (a broken further one raises
    ToolMissing: the user named it; a broken first one is left out here and
    reported as the `java` client's reason); else the default (JAVA_HOME,
    else PATH) and every JDK >= MIN_JAVA under JVM_DIRS (others there are
    passed over quietly).
    """
    return _discover(tuple(str(h) for h in java_homes), os.environ.get("JAVA_HOME", ""),
                     os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=8)
def _discover(java_homes: tuple[str, ...], _java_home_env: str, _path: str) -> tuple[JDK, ...]:
    # the environment is part of the key: JAVA_HOME or PATH changing means other JDKs
    found: list[JDK] = []
    if java_homes:
        for index, home in enumerate(java_homes):
            try:
                found.append(find_jdk(home))
            except ToolMissing:
                if index > 0:
                    raise
    else:
        try:
            found.append(find_jdk(None))
        except ToolMissing:
            pass  # no default JDK; the ones under JVM_DIRS are still JDKs
        for directory in JVM_DIRS:
            if not directory.is_dir():
                continue
            for candidate in sorted(directory.iterdir()):
                if not (candidate / "bin" / "javac").exists():
                    continue
                try:
                    found.append(find_jdk(candidate))
                except ToolMissing:
                    continue  # too old or broken: not one of the JDKs we can run
    unique: dict[Path, JDK] = {}
    for jdk in found:
        unique.setdefault(jdk.home.resolve(), jdk)
    return tuple(unique.values())


def jdk_variants(java_homes: Sequence[str] = ()) -> dict[str, JDK]:
    """The JDKs besides the default one, by the suffix of their client names:
    `21` for java@21 (the feature version; the full version when two JDKs
    share a feature version). Empty when there is no JDK at all."""
    try:
        default: Path | None = find_jdk(java_homes[0] if java_homes else None).home.resolve()
    except ToolMissing:
        default = None
    others = [jdk for jdk in discover_jdks(java_homes) if jdk.home.resolve() != default]
    features = [jdk.feature for jdk in others]
    variants: dict[str, JDK] = {}
    for jdk in others:
        suffix = str(jdk.feature)
        if features.count(jdk.feature) > 1:
            suffix = ".".join(map(str, _numbers(jdk.version))) or suffix
        variants.setdefault(suffix, jdk)
    return variants


def _numbers(version: str) -> tuple[int, ...]:
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(p) for p in found.group(0).split(".")) if found else ()
