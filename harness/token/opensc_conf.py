"""A run-private OpenSC configuration: file caching in the run directory and
the card's own driver only, so each client process's C_Initialize finds and
binds the card cheaply (--p11-opensc-cache, on by default for OpenSC).

What it changes, from OpenSC's sources: src/libopensc/pkcs15.c reads
`use_file_caching` (yes / public / no) in `framework pkcs15`, off by default
for sc-hsm and openpgp; src/libopensc/ctx.c takes `file_cache_dir` there and
`card_drivers` in the app block (only those drivers probe the card), and reads
the file named by $OPENSC_CONF. For sc-hsm the cache serves the device
certificate, the key and certificate descriptions and the certificates from
disk (OpenSC#2208: the maintainers' answer to a slow C_Initialize on a
Nitrokey HSM). "public" caches public files only: nothing the PIN protects
is written to the run directory. The calls a client makes and what the card
signs are the same; what the card is asked to read is less.

The file replaces the system's opensc.conf for the run (scconf has no
include): `--p11-opensc-cache no` keeps the system's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.token.fixed_slots import fixed_slot_card, free_id_card
from harness.token.probe import ask

OPENSC_MODULES = ("opensc-pkcs11", "onepin-opensc-pkcs11")
CONF_NAME = "opensc.conf"
CACHE_NAME = "opensc-cache"


def is_opensc(module: Path | str) -> bool:
    """An OpenSC PKCS#11 module, by its file name (before anything loads it)."""
    name = Path(module).name
    return any(name.startswith(stem + ".") for stem in OPENSC_MODULES)


def parse_cache_setting(value: str | None) -> bool:
    """--p11-opensc-cache: yes (the default) or no."""
    text = (value or "yes").strip().lower()
    if text in ("yes", "on", "true", "1"):
        return True
    if text in ("no", "off", "false", "0"):
        return False
    raise ConfigError(f"--p11-opensc-cache takes yes or no, not {value!r}")


def card_driver(info: Mapping[str, Any]) -> str | None:
    """OpenSC's short name of the driver (ctx.c, internal_card_drivers) for the
    card the token says it is; None: not known here, every driver stays."""
    if free_id_card(info) is not None:
        return "sc-hsm"
    fixed = fixed_slot_card(info) or ""
    if "OpenPGP" in fixed:
        return "openpgp"
    if "PIV" in fixed:
        return "PIV-II"
    return None


def conf_text(cache_dir: Path, driver: str | None) -> str:
    drivers = f"\tcard_drivers = {driver};\n" if driver else ""
    return ("# p11tls: run-private OpenSC configuration (harness.token.opensc_conf)\n"
            "app default {\n"
            f"{drivers}"
            "\tframework pkcs15 {\n"
            "\t\tuse_file_caching = public;\n"
            f"\t\tfile_cache_dir = {cache_dir};\n"
            "\t}\n"
            "}\n")


def write_conf(directory: Path, driver: str | None) -> dict[str, str]:
    """Write the configuration (and its cache directory) into `directory`;
    return the environment every process that loads OpenSC needs."""
    if any(c in str(directory) for c in ';{}"\n'):
        raise ConfigError(f"the run directory {directory} cannot be named in opensc.conf")
    cache = directory / CACHE_NAME
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / CONF_NAME
    path.write_text(conf_text(cache, driver))
    return {"OPENSC_CONF": str(path)}


def opensc_environment(module: Path, label: str, directory: Path, enabled: bool,
                       describe: Any) -> dict[str, str]:
    """The run's OpenSC environment ({} for other modules or when switched off).
    `describe(env)`: the token's description through that configuration (a
    child process: the first C_Initialize, which also fills the cache), from
    which the card's own driver is chosen."""
    if not enabled or not is_opensc(module):
        return {}
    env = write_conf(directory, None)
    driver = card_driver(describe(env))
    return write_conf(directory, driver) if driver else env


def run_opensc_environment(settings: Any, workdir: Path) -> dict[str, str]:
    """The run's OpenSC environment for a named module: {} unless the module is
    OpenSC's and --p11-opensc-cache is not no; this process and every client
    load OpenSC with it."""
    assert settings.module is not None and settings.token_label is not None
    module, label = settings.module, settings.token_label

    def describe(env: dict[str, str]) -> Any:
        return ask("info", [str(module), label], env=env)

    return opensc_environment(module, label, workdir / "opensc", settings.opensc_cache,
                              describe)
