"""Named lab modules: `--p11-lab NAME` picks an entry of the lab file.

The lab file is `P11TLS_LAB_FILE`, else `p11tls.toml` in the current
directory, else the `[tool.p11tls]` table of its `pyproject.toml`. Each entry
`[lab.NAME]` names a module (a path, a library name looked up in the system's
library directories, or a named module such as `tpm2`), the token (label or
serial), where the PIN comes from (an environment variable or a file: a PIN
never sits in the lab file or on a command line), the mode (`read-only`: the
keys already on the token, as --p11-existing; `provision`: the run makes its
own keys) and optionally a profile, keys and clients. docs/lab/p11tls.toml is
the documented example.

Every entry of the file is checked when one is used: an unknown key or a bad
value is one line naming the file and the key. A module whose library is not
installed raises LabModuleMissing, which the plugin turns into one skipped
case with what to install.
"""

from __future__ import annotations

import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ConfigError, HarnessError
from harness.installed import LIBRARY_DIRS, find_library
from harness.matrix.keys import parse_keys
from harness.process import read_bounded
from harness.token.named_modules import NAMED_MODULES, is_named
from harness.token.probe import list_tokens

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODULE_FOLDERS = ("pkcs11", "softhsm")
MAX_LAB_BYTES = 1 << 20  # a lab file is a page of TOML
MAX_PIN_FILE_BYTES = 4096  # a PIN, a newline
LAB_FILE_ENV = "P11TLS_LAB_FILE"
MODES = ("read-only", "provision")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TEXT_KEYS = ("description", "module", "token_label", "token_serial", "pin_env", "pin_file",
             "mode", "profile", "install")
LIST_KEYS = ("keys", "clients")  # a list of names or one comma-separated string


class LabModuleMissing(ConfigError):
    """The entry's library (or a named module's parts) is not installed here."""


@dataclass(frozen=True)
class LabEntry:
    name: str
    source: Path  # the lab file: relative paths are taken from its directory
    module: str
    mode: str
    description: str = ""
    token_label: str | None = None
    token_serial: str | None = None
    pin_env: str | None = None
    pin_file: str | None = None
    profile: str | None = None
    keys: str | None = None
    clients: str | None = None
    install: str | None = None
    where: str = field(default="", repr=False)  # "FILE: lab.NAME" for error lines

    @property
    def named(self) -> bool:

        return is_named(self.module)


def find_lab_file(base: Path, env: Mapping[str, str]) -> tuple[Path, str]:
    """The lab file and the table prefix its entries sit under."""
    if env.get(LAB_FILE_ENV):
        path = base / Path(env[LAB_FILE_ENV]).expanduser()
        if not path.is_file():
            raise ConfigError(f"{LAB_FILE_ENV}={env[LAB_FILE_ENV]}: no such file")
        return path, "tool.p11tls." if path.name == "pyproject.toml" else ""
    if (base / "p11tls.toml").is_file():
        return base / "p11tls.toml", ""
    pyproject = base / "pyproject.toml"
    tool = _read(pyproject).get("tool") if pyproject.is_file() else None
    if isinstance(tool, dict) and "p11tls" in tool:
        return pyproject, "tool.p11tls."
    raise ConfigError(f"--p11-lab needs a lab file: p11tls.toml or [tool.p11tls] in "
                      f"pyproject.toml in {base}, or {LAB_FILE_ENV} "
                      "(docs/lab/p11tls.toml is an example)")


def _read(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(read_bounded(path, MAX_LAB_BYTES).decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def load_lab(path: Path, prefix: str = "") -> dict[str, LabEntry]:
    """Every entry of a lab file, checked; ConfigError names the file and key."""
    data: object = _read(path)
    for part in prefix.rstrip(".").split(".") if prefix else ():
        data = data.get(part, {}) if isinstance(data, dict) else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {prefix.rstrip('.')}: must be a table")
    unknown = sorted(set(data) - {"lab"})
    if unknown:
        raise ConfigError(f"{path}: {prefix}{unknown[0]}: unknown key (a lab file has "
                          "[lab.NAME] tables only)")
    labs = data.get("lab", {})
    if not isinstance(labs, dict):
        raise ConfigError(f"{path}: {prefix}lab: must be a table of [lab.NAME] entries")
    return {name: _entry(path, f"{prefix}lab.{name}", name, table)
            for name, table in labs.items()}


def _entry(path: Path, where: str, name: str, table: object) -> LabEntry:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: {where}{'.' + key if key else ''}: {why}")

    if not NAME.match(name):
        raise bad("", "a lab name is letters, digits, '.', '_' and '-'")
    if not isinstance(table, dict):
        raise bad("", "must be a table")
    values: dict[str, str] = {}
    for key, value in table.items():
        if key == "pin":
            raise bad(key, "a PIN is never written in the lab file: use pin_env (an "
                           "environment variable) or pin_file")
        if key in LIST_KEYS:
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                value = ",".join(value)
            if not isinstance(value, str) or not value.strip():
                raise bad(key, "must be a list of names or a comma-separated string")
        elif key not in TEXT_KEYS:
            raise bad(key, f"unknown key: choose from {', '.join(TEXT_KEYS + LIST_KEYS)}")
        elif not isinstance(value, str) or not value.strip():
            raise bad(key, "must be a non-empty string")
        values[key] = value.strip()
    if "module" not in values:
        raise bad("module", "missing: a module's path, a library name or a named module "
                            "(tpm2)")

    named = is_named(values["module"])
    mode = values.get("mode", "provision" if named else "")
    if mode not in MODES:
        raise bad("mode", f"must be {' or '.join(repr(m) for m in MODES)}, not {mode!r}"
                  if mode else "missing: 'read-only' (the keys already on the token) or "
                  "'provision' (the run makes its own keys)")
    if named:
        for key in ("token_label", "token_serial", "pin_env", "pin_file"):
            if key in values:
                raise bad(key, f"named module {values['module']} makes its own token and PIN")
        if mode == "read-only":
            raise bad("mode", f"named module {values['module']} starts with an empty token: "
                              "use 'provision'")
    else:
        if ("token_label" in values) == ("token_serial" in values):
            raise bad("token_label", "give the token's label or its serial (token_serial), "
                                     "one of them")
        if ("pin_env" in values) == ("pin_file" in values):
            raise bad("pin_env", "give where the PIN comes from: pin_env (an environment "
                                 "variable) or pin_file, one of them")
    if "keys" in values:

        try:
            parse_keys(values["keys"])
        except ConfigError as exc:
            raise bad("keys", str(exc)) from None
    return LabEntry(name=name, source=path, mode=mode, where=f"{path}: {where}",
                    **{k: v for k, v in values.items() if k != "mode"})


def lab_options(name: str, cli: Mapping[str, object], ini: Mapping[str, object],
                env: Mapping[str, str], base: Path | None) -> dict[str, str | None]:
    """What lab entry `name` sets, by config option name, for the options the
    command line and ini leave open (it beats the environment)."""
    base = base or Path.cwd()
    path, prefix = find_lab_file(base, env)
    entries = load_lab(path, prefix)
    if name not in entries:
        raise ConfigError(f"--p11-lab {name}: no such entry in {path}: choose from "
                          f"{', '.join(entries) or '(none: add [lab.NAME] tables)'}")
    entry = entries[name]

    def given(option: str) -> bool:
        return any(source.get(option) not in (None, "", []) for source in (cli, ini))

    for option in ("p11_module", "p11_token_label", "p11_pin"):
        if given(option):
            raise ConfigError(f"--p11-lab {name} names the module, token and PIN: drop "
                              f"--{option.replace('_', '-')}")
    module = resolve_module(entry)
    values: dict[str, str | None] = {"p11_module": module,
                                     "p11_existing": "yes" if entry.mode == "read-only"
                                     else "no"}
    if not entry.named:
        values["p11_token_label"] = entry.token_label or _label_of_serial(
            Path(module), entry.token_serial or "", entry)
        values["p11_pin"] = read_pin(entry, env)
    if entry.profile:
        profile = Path(entry.profile).expanduser()
        is_file = "/" in entry.profile or entry.profile.endswith(".toml")
        values["p11_profile"] = str(path.parent / profile) if is_file else entry.profile
    values["p11_keys"], values["p11_clients"] = entry.keys, entry.clients
    return {k: v for k, v in values.items() if v is not None and not given(k)}


def resolve_module(entry: LabEntry) -> str:
    """The module's file (or the named module's name); LabModuleMissing when
    the library is not installed, with what to install."""
    install = f": {entry.install}" if entry.install else ""
    if entry.named:

        module = __import__(NAMED_MODULES[entry.module].split(":")[0], fromlist=["_"])
        reason = getattr(module, "unavailable_reason", lambda: None)()
        if reason:
            raise LabModuleMissing(f"lab module {entry.name}: {reason}")
        return entry.module
    text = entry.module
    if text.startswith(("/", "~", "./", "../")):
        path = entry.source.parent / Path(text).expanduser()
        if not path.is_file():
            raise LabModuleMissing(f"lab module {entry.name}: {path} is not installed{install}")
        return str(path)

    # a library name: the library directories, then their PKCS#11 module
    # folders (p11-kit's pkcs11/, Debian's softhsm/ for libsofthsm2.so)
    found = find_library(text, *(f"{folder}/{text}" for folder in MODULE_FOLDERS))
    if found is None:
        raise LabModuleMissing(f"lab module {entry.name}: {text} is not installed (looked in "
                               f"{', '.join(str(d) for d in LIBRARY_DIRS)}){install}")
    return str(found)


def read_pin(entry: LabEntry, env: Mapping[str, str]) -> str:
    """The PIN from the entry's environment variable or file (never echoed)."""
    if entry.pin_env:
        if entry.pin_env not in env:
            raise ConfigError(f"--p11-lab {entry.name}: the PIN variable {entry.pin_env} is "
                              "not set")
        return env[entry.pin_env]
    path = entry.source.parent / Path(entry.pin_file or "").expanduser()
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"--p11-lab {entry.name}: PIN file {path} is readable by others: "
                              f"chmod 600 {path}")
        return read_bounded(path, MAX_PIN_FILE_BYTES).decode("utf-8").strip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"--p11-lab {entry.name}: PIN file {path} is not UTF-8 text"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"--p11-lab {entry.name}: PIN file {path}: {exc.strerror}") from None


def _label_of_serial(module: Path, serial: str, entry: LabEntry) -> str:
    """The label of the token with this serial, read in a child process (this
    one must not load a module it loads again later), without a login."""
    try:
        tokens = list_tokens(module)
    except HarnessError as exc:
        raise ConfigError(f"--p11-lab {entry.name}: {exc}") from None
    labels = [t["label"] for t in tokens if t["serial"] == serial.strip()]
    if not labels:
        present = ", ".join(f"{t['serial']} ({t['label']})" for t in tokens) or "none"
        raise ConfigError(f"--p11-lab {entry.name}: no token with serial {serial} in {module}: "
                          f"serials present: {present}")
    if sum(t["label"] == labels[0] for t in tokens) > 1:
        raise ConfigError(f"--p11-lab {entry.name}: the token with serial {serial} shares its "
                          f"label {labels[0]!r} with another token: relabel one of them")
    return labels[0]
