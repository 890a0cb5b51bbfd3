"""Where the distribution installs the shared objects the harness uses.

Debian puts them under the multiarch directory (/usr/lib/x86_64-linux-gnu,
/usr/lib/aarch64-linux-gnu, ...), some packages directly under /usr/lib, and
other distributions under /usr/lib64; one search serves every part.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

_MULTIARCH = sysconfig.get_config_var("MULTIARCH") or ""
LIBRARY_DIRS = tuple(dict.fromkeys(
    Path(d) for d in (
        f"/usr/lib/{_MULTIARCH}" if _MULTIARCH else "",
        "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64", "/usr/lib", "/usr/local/lib",
    ) if d
))


def find_library(*names: str) -> Path | None:
    """The first existing file of `names` (paths relative to a library
    directory, in order of preference) below any library directory."""
    for name in names:
        for directory in LIBRARY_DIRS:
            if (directory / name).is_file():
                return directory / name
    return None


SOFTHSM = ("softhsm/libsofthsm2.so",)
PKCS11_SPY = ("pkcs11/pkcs11-spy.so",)
LIBP11_ENGINE = ("engines-3/pkcs11.so", "engines-1.1/pkcs11.so")
PKCS11_PROVIDER = ("ossl-modules/pkcs11.so",)
OPENSC = ("pkcs11/opensc-pkcs11.so", "opensc-pkcs11.so")
P11_KIT_PROXY = ("p11-kit-proxy.so",)
