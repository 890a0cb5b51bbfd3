"""Versions of the parts a case runs on, and the version ranges a fact holds for.

A measured fact (an expected mechanism, a known failure, a profile's outcome)
names the components it was measured on, e.g. `{ libp11 = "0.4.12",
openssl = "3.0" }`. A range is a comma-separated list of conditions, all of
which must hold:

  "3.0"         the 3.0 series: 3.0, 3.0.0, 3.0.19 (a bare version is a prefix)
  "==3.7.9"     exactly 3.7.9 (3.7.9.1 too: missing parts count as 0)
  ">=17,<21"    17 up to, not including, 21
  "*"           any detected version

Versions are compared part by part as numbers; text after the numbers
(`17.0.15+6-Debian`, `0.4.12-0.1`) is ignored.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from harness.errors import ConfigError

# What a version range may be keyed to: the clients' parts and the module.
COMPONENTS = {
    "openssl": "OpenSSL (openssl-engine, openssl-provider, curl, openvpn, python-ssl)",
    "libp11": "the libp11 engine (openssl-engine, curl, eap-tls)",
    "pkcs11-provider": "pkcs11-provider (openssl-provider, python-ssl, curl from 8.12)",
    "gnutls": "GnuTLS (gnutls)",
    "java": "the JDK (java, java-nocombined, and java@N for each further JDK)",
    "nss": "NSS (nss: tstclnt from libnss3-tools)",
    "curl": "curl (curl, with OpenSSL through the libp11 engine or pkcs11-provider)",
    "go": "the Go toolchain (go: crypto/tls)",
    "crypto11": "ThalesIgnite/crypto11 (go), the Debian package's version",
    "openvpn": "OpenVPN (openvpn)",
    "pkcs11-helper": "pkcs11-helper (openvpn), the Debian package's version",
    "python": "Python (python-ssl: its ssl module on the system OpenSSL)",
    "wpa_supplicant": "wpa_supplicant's eapol_test (eap-tls)",
    "hostapd": "hostapd, the RADIUS server of eap-tls",
    "softhsm": "SoftHSM2, the embedded default module",
    "tpm2-pkcs11": "tpm2-pkcs11, the module of --p11-module tpm2",
    "swtpm": "swtpm, the software TPM below --p11-module tpm2",
}
# Parts of the module, not of a client: a fact need not name them.
MODULE_COMPONENTS = frozenset({"softhsm", "tpm2-pkcs11", "swtpm"})

Versions = Mapping[str, "str | None"]  # component -> detected version (None: not detected)

_NUMBERS = re.compile(r"\d+(?:\.\d+)*")
_CONDITION = re.compile(r"^(==|>=|<=|>|<)?\s*(\d+(?:\.\d+)*)$")


def version_tuple(text: str) -> tuple[int, ...] | None:
    """`17.0.15+6-Debian` -> (17, 0, 15); None when there is no number."""
    found = _NUMBERS.search(text)
    return tuple(int(p) for p in found.group(0).split(".")) if found else None


def check_range(spec: object) -> str:
    """The range text if it parses, else ConfigError saying what is allowed."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"version range {spec!r} is not a text such as \"0.4.12\" "
                          "or \">=17,<21\"")
    if spec.strip() == "*":
        return spec
    for condition in spec.split(","):
        if _CONDITION.match(condition.strip()) is None:
            raise ConfigError(f"version range {spec!r}: {condition.strip()!r} is not "
                              "VERSION, ==VERSION, >=VERSION, >VERSION, <=VERSION or <VERSION")
    return spec


def in_range(version: str, spec: str) -> bool:
    """Whether a detected version is inside a range (see the module docstring)."""
    have = version_tuple(version)
    if have is None:
        return False
    if spec.strip() == "*":
        return True
    for condition in spec.split(","):
        found = _CONDITION.match(condition.strip())
        assert found is not None, spec  # ranges are checked when a data file is loaded
        op, text = found.group(1), found.group(2)
        want = tuple(int(p) for p in text.split("."))
        if op is None:  # a series: equal on the parts it names
            ok = have[:len(want)] == want
        else:
            width = max(len(have), len(want))
            a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
            ok = {"==": a == b, ">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b}[op]
        if not ok:
            return False
    return True


def mismatches(ranges: Mapping[str, str], seen: Versions) -> list[str]:
    """Why a fact measured on `ranges` does not hold for the versions `seen`:
    one text per component outside its range, undetected, or not named by the
    fact although the case's client consists of it. Empty: the fact holds."""
    found = []
    for name, version in seen.items():
        spec = ranges.get(name)
        if spec is None:
            if name not in MODULE_COMPONENTS:
                found.append(f"{name} {version or '(not detected)'} (not measured)")
        elif version is None:
            found.append(f"{name} not detected (measured on {spec})")
        elif not in_range(version, spec):
            found.append(f"{name} {version} (measured on {spec})")
    return found


# -- detection ---------------------------------------------------------------------


def first_version(text: str) -> str | None:
    """The first dotted version in a tool's output: `gnutls-cli 3.7.9` -> `3.7.9`."""
    found = re.search(r"\d+\.\d+(?:\.\d+)*", text)
    return found.group(0) if found else None


def command_version(argv: list[str]) -> str | None:
    """The version a tool prints (`openssl version`), or None."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (out.stdout or out.stderr).splitlines()
    return first_version(lines[0]) if lines else None


def package_version(path: Path | None) -> str | None:
    """The upstream version of the distribution package that installed a file
    (dpkg, else rpm): libp11 and pkcs11-provider do not print their own."""
    if path is None:
        return None
    real = str(Path(path).resolve())
    queries = (
        (["dpkg-query", "-S", real], lambda out: out.split(":")[0].strip(),
         lambda package: ["dpkg-query", "-W", "-f=${Version}", package]),
        (["rpm", "-qf", "--qf", "%{NAME}", real], lambda out: out.strip(),
         lambda package: ["rpm", "-q", "--qf", "%{VERSION}", package]),
    )
    for find, package_of, ask in queries:
        if shutil.which(find[0]) is None:
            continue
        try:
            owner = subprocess.run(find, capture_output=True, text=True, timeout=10)
            if owner.returncode != 0 or not owner.stdout.strip():
                continue
            version = subprocess.run(ask(package_of(owner.stdout.splitlines()[0])),
                                     capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        text = version.stdout.strip().split(":", 1)[-1]  # Debian epoch
        upstream = re.match(r"\d+(?:\.\d+)*", text)
        if version.returncode == 0 and upstream:
            return upstream.group(0)
    return None
