"""The recording interposer: a small C PKCS#11 module every client loads instead
of the real one (see docs/design.md, "The interposer").

`build_interposer()` compiles interposer.c once per source version into a cache
directory (with ``sanitize=True``, or $P11TLS_INTERPOSER_SANITIZE=1, a separate
build with AddressSanitizer and UBSan: a process loading it needs libasan
first, e.g. LD_PRELOAD, see scripts/sanitize-interposer.sh);
`write_interposer_config()` writes the file the C side reads and returns the
environment a client process needs. The record it writes is read
by `harness.interposer.calls`.

Configuration format (one setting per line, ``key value``, the value being the
rest of the line; blank lines and ``#`` comments are ignored)::

    module /usr/lib/softhsm/libsofthsm2.so
    record /path/to/reports/case.calls.jsonl

Emulation settings (``hide 0xd # CKM_RSA_PKCS_PSS``, ``sign_max_input 2048``,
...) are more lines of the same shape, written by `harness.interposer.profile.Profile.
interposer_lines()`; interposer.c's opening comment lists them. The C side
refuses unknown keys and bad values: C_Initialize prints the reason to stderr
and returns CKR_GENERAL_ERROR.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from harness.errors import ConfigError, HarnessError, ToolMissing
from harness.pkcs11.c_header import HEADER_NAME, header_text

__all__ = [
    "CONF_ENV",
    "INTERPOSER_SOURCE",
    "SANITIZE_ENV",
    "build_interposer",
    "cache_dir",
    "sanitize_requested",
    "write_interposer_config",
    "write_names_header",
]

CONF_ENV = "P11TLS_INTERPOSER_CONF"
INTERPOSER_SOURCE = Path(__file__).with_name("interposer.c")

# Part of the cache key: a change here rebuilds like a change of the source.
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden")
# Added for a sanitizer build: any report ends the process (no recovering from UB).
SANITIZE_CFLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                   "-fno-omit-frame-pointer", "-g")
SANITIZE_ENV = "P11TLS_INTERPOSER_SANITIZE"
LIBS = ("-ldl", "-lpthread", "-lcrypto")  # libcrypto: the digests of emulated combined mechanisms
INCLUDE_CANDIDATES = (Path("/usr/include/p11-kit-1"), Path("/usr/local/include/p11-kit-1"))
_INSTALL_HINT = "install gcc and libp11-kit-dev (scripts/setup-system.sh)"
_OPENSSL_HINT = "install libssl-dev (scripts/setup-system.sh)"
_KEY_RE = re.compile(r"[a-z][a-z0-9_]*\Z")


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/p11tls, else ~/.cache/p11tls."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "p11tls"


def build_interposer(
    source: Path | None = None, cache: Path | None = None, sanitize: bool | None = None
) -> Path:
    """Path of the compiled interposer, building it first if needed.

    `sanitize` (None: $P11TLS_INTERPOSER_SANITIZE) builds with AddressSanitizer
    and UBSan, under a name of its own.

    The name tables come from harness.pkcs11: its generated header is
    written next to the build and compiled in (`#include "p11tls_names.h"`).
    The file name carries a hash of the source, that header and the compiler
    flags, so an edited source or vocabulary gets a new file; an existing
    build is reused without looking for a compiler. The build goes to a
    temporary name and is renamed into place, so parallel pytest-xdist
    workers never see a half-written module.
    """
    source = source or INTERPOSER_SOURCE
    cache = cache or cache_dir()
    try:
        code = source.read_bytes()
    except OSError as exc:
        raise HarnessError(f"interposer source {source} is unreadable: {exc.strerror}") from None
    if sanitize is None:
        sanitize = sanitize_requested()
    cflags = CFLAGS + SANITIZE_CFLAGS if sanitize else CFLAGS
    names = header_text().encode()
    digest = hashlib.sha256(
        code + b"\0" + names + "\0".join(cflags + LIBS).encode()
    ).hexdigest()[:16]
    target = cache / f"p11tls-interposer-{digest}{'-asan' if sanitize else ''}.so"
    if target.is_file():
        return target

    cc = _find_compiler()
    include = _find_pkcs11_include()
    _check_openssl_headers(cc)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=cache)
    except OSError as exc:
        raise HarnessError(
            f"cannot write the interposer build cache {cache} ({exc.strerror}): set "
            "XDG_CACHE_HOME to a writable directory"
        ) from None
    os.close(fd)
    tmp = Path(tmp_name)
    generated = Path(tempfile.mkdtemp(prefix=f".{target.name}.h.", dir=cache))
    write_names_header(generated)
    argv = [*cc, *cflags, f"-I{generated}", f"-I{include}", "-o", str(tmp), str(source), *LIBS]
    try:
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=120, check=False,
                env={**os.environ, "LC_ALL": "C"},
            )
        except subprocess.TimeoutExpired:
            raise HarnessError(f"building the interposer timed out: {shlex.join(argv)}") from None
        if proc.returncode != 0:
            detail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise HarnessError(
                f"building the interposer failed ({cc[0]} exit {proc.returncode}): {detail}"
            )
        tmp.chmod(0o755)
        os.replace(tmp, target)  # atomic: another worker may have done the same
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(generated, ignore_errors=True)
    return target


def write_names_header(directory: Path) -> Path:
    """Write the generated name tables interposer.c includes into `directory`
    (compile with -I`directory`); returns the header's path."""
    path = Path(directory) / HEADER_NAME
    path.write_text(header_text())
    return path


def sanitize_requested() -> bool:
    """Whether $P11TLS_INTERPOSER_SANITIZE asks for the sanitizer build."""
    value = os.environ.get(SANITIZE_ENV, "").strip().lower()
    if value in ("", "0", "no", "false"):
        return False
    if value in ("1", "yes", "true"):
        return True
    raise ConfigError(f"{SANITIZE_ENV}={value!r} is not 1 or 0 (yes/no, true/false)")


def _find_compiler() -> list[str]:
    """argv prefix of the C compiler: $CC (may carry words, e.g. "ccache gcc") or cc."""
    cc = shlex.split(os.environ.get("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        shown = cc[0] if cc else "$CC"
        raise ToolMissing(
            f"C compiler {shown!r} not found, needed to build the PKCS#11 interposer: "
            f"{_INSTALL_HINT}, or set CC"
        )
    return cc


def _find_pkcs11_include(candidates: Sequence[Path] | None = None) -> Path:
    """The directory holding p11-kit/pkcs11.h (pkg-config first, then the usual places)."""
    if candidates is None:
        candidates = [*_pkg_config_include_dirs(), *INCLUDE_CANDIDATES]
    for directory in candidates:
        if (directory / "p11-kit" / "pkcs11.h").is_file():
            return directory
    looked = ", ".join(str(d) for d in candidates) or "nowhere"
    raise ToolMissing(
        f"pkcs11.h from p11-kit not found (looked in {looked}), needed to build the "
        f"PKCS#11 interposer: {_INSTALL_HINT}"
    )


def _check_openssl_headers(cc: Sequence[str]) -> None:
    """ToolMissing unless the compiler finds openssl/evp.h (from libssl-dev)."""
    try:
        proc = subprocess.run(
            [*cc, "-E", "-x", "c", "-"], input="#include <openssl/evp.h>\n",
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except subprocess.TimeoutExpired:
        return  # the build itself will report it
    if proc.returncode != 0 and "openssl/evp.h" in proc.stderr:
        raise ToolMissing(
            f"openssl/evp.h not found by {cc[0]}, needed to build the PKCS#11 interposer "
            f"(it hashes for emulated combined mechanisms): {_OPENSSL_HINT}"
        )


def _pkg_config_include_dirs() -> list[Path]:
    pkg_config = shutil.which("pkg-config")
    if pkg_config is None:
        return []
    try:
        proc = subprocess.run(
            [pkg_config, "--cflags-only-I", "p11-kit-1"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except subprocess.TimeoutExpired:
        return []
    return [Path(w[2:]) for w in proc.stdout.split() if w.startswith("-I")]


def write_interposer_config(
    real_module: Path,
    record_file: Path,
    conf_path: Path,
    extra_lines: Sequence[str] = (),
) -> dict[str, str]:
    """Write the interposer's configuration; return the variables the client needs.

    `extra_lines` are further ``key value`` lines (emulation settings); they are
    checked for shape here, and the C side refuses keys it does not know.
    """
    real_module = Path(real_module)
    if not real_module.is_file():
        raise ConfigError(
            f"real PKCS#11 module {real_module} does not exist: the interposer needs the "
            "module it should forward to (check --p11-module)"
        )
    lines = [
        "# p11tls interposer configuration, written by harness.interposer",
        f"module {_value(real_module.absolute(), 'module')}",
        f"record {_value(Path(record_file).absolute(), 'record')}",
    ]
    for line in extra_lines:
        key, _, value = line.strip().partition(" ")
        if not _KEY_RE.match(key) or not value.strip() or "\n" in line or "\r" in line:
            raise ConfigError(
                f"interposer setting {line!r} is not one 'key value' line"
            )
        if key in ("module", "record"):
            raise ConfigError(
                f"interposer setting {line!r}: {key} is set from the arguments, not extra_lines"
            )
        lines.append(f"{key} {value.strip()}")
    Path(record_file).parent.mkdir(parents=True, exist_ok=True)
    conf_path = Path(conf_path)
    conf_path.parent.mkdir(parents=True, exist_ok=True)
    conf_path.write_text("\n".join(lines) + "\n")
    return {CONF_ENV: str(conf_path.absolute())}


def _value(path: Path, key: str) -> str:
    text = str(path)
    # The C side takes the rest of the line, so the only thing a path must not
    # hold is a line break; surrounding spaces would be lost to its stripping.
    if "\n" in text or "\r" in text or text != text.strip():
        raise ConfigError(f"interposer {key} path {text!r} has a line break or edge spaces")
    return text
