"""One place that resolves the harness's settings.

Precedence: command line > ini file > environment > default. The pytest
plugin and the CLI both hand their raw values to `resolve`.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.clients import client_names
from harness.clients.base import ClientOptions
from harness.errors import ConfigError
from harness.matrix.keys import KeySpec, parse_keys
from harness.run.lab import lab_options
from harness.token.existing_keys import parse_key_uri
from harness.token.named_modules import is_named
from harness.token.opensc_conf import parse_cache_setting


@dataclass(frozen=True)
class Option:
    name: str  # option / ini key without dashes: p11_module
    env: str | None  # environment variable, if any
    help: str
    default: str | None = None
    flag: bool = False  # on the command line a switch without a value
    repeatable: bool = False  # may be given several times; ini: one per line


OPTIONS: tuple[Option, ...] = (
    Option("p11_module", "PKCS11_MODULE",
           "PKCS#11 module to test, or 'tpm2' for tpm2-pkcs11 on a throw-away software TPM "
           "(default: a throw-away SoftHSM2 token)"),
    Option("p11_token_label", "PKCS11_TOKEN_LABEL",
           "label of the token to use (required with --p11-module)"),
    Option("p11_pin", "PKCS11_TOKEN_PIN", "user PIN of the token"),
    Option("p11_profile", "P11TLS_PROFILE",
           "emulate a constrained token on top of the module: a shipped profile name or a "
           "TOML file (p11tls profiles lists them)"),
    Option("p11_reports", "P11TLS_REPORTS", "directory for results.json and logs",
           "reports"),
    Option("p11_timeout", "P11TLS_TIMEOUT", "seconds allowed per handshake", "20"),
    Option("p11_keys", "P11TLS_KEYS",
           "key types of the matrix, comma-separated, or 'all'", "rsa2048,p256,p384"),
    Option("p11_clients", "P11TLS_CLIENTS",
           "TLS clients of the matrix, comma-separated, or 'all'", "all"),
    Option("java", None, "JDK (home directory or bin/java) for the Java clients; "
           "default: JAVA_HOME, else the one on PATH; given again, each further JDK is "
           "a client of its own (java@21, ...)", repeatable=True),
    Option("java_p11_config", None,
           "extra SunPKCS11 configuration line for the Java clients", repeatable=True),
    Option("p11_no_record", "P11TLS_NO_RECORD",
           "run clients on the module directly, without the recording interposer",
           flag=True),
    Option("p11_spy", "P11TLS_SPY",
           "also chain OpenSC's pkcs11-spy below the interposer; its log is kept per case",
           flag=True),
    Option("p11_allow_slot_overwrite", "P11TLS_ALLOW_SLOT_OVERWRITE",
           "provision on a token whose keys sit in fixed slots (OpenPGP, PIV): existing keys "
           "may be replaced, use a disposable card only", flag=True),
    Option("p11_opensc_cache", "P11TLS_OPENSC_CACHE",
           "for OpenSC modules: a run-private OpenSC configuration with file caching in the run "
           "directory and the card's own driver only (yes, the default), or the system's (no)"),
    Option("p11_warm", "P11TLS_WARM",
           "load the module once, in one long-lived process that serves every client through "
           "p11-kit-client.so (p11-kit's RPC); refused when the RPC would change the token's "
           "mechanisms", flag=True),
    Option("p11_existing", "P11TLS_EXISTING",
           "read-only: test the key pairs already on the token (those with a certificate of "
           "the same CKA_ID); nothing is written to the token", flag=True),
    Option("p11_lab", "P11TLS_LAB",
           "a lab module named in p11tls.toml ([tool.p11tls] in pyproject.toml, or "
           "P11TLS_LAB_FILE): its module, token, PIN source, mode and profile"),
    Option("p11_key", None,
           "read-only: test this key already on the token, an RFC 7512 URI "
           "(pkcs11:object=LABEL;type=private or id=…); nothing is written", repeatable=True),
    Option("p11_wide", "P11TLS_WIDE",
           "print the terminal matrix as one table, however wide (default: fit the terminal, "
           "80 columns when not a terminal)", flag=True),
)

# The switches the commands that drive the MatrixRunner (sweep, token-sweep) take
# besides every single-valued --p11-… option.
RUNNER_FLAGS = ("p11_allow_slot_overwrite", "p11_warm")


def add_runner_options(parser: argparse.ArgumentParser) -> None:
    """The --p11-… options of `p11tls sweep` and `p11tls token-sweep`."""
    for option in OPTIONS:
        if not option.name.startswith("p11_") or option.repeatable:
            continue
        flag = "--" + option.name.replace("_", "-")
        env = f" [env {option.env}]" if option.env else ""
        if option.flag and option.name in RUNNER_FLAGS:
            parser.add_argument(flag, dest=option.name, action="store_const", const="yes",
                                default=None, help=option.help + env)
        elif not option.flag:
            parser.add_argument(flag, dest=option.name, help=option.help + env)


TRUE_WORDS = ("1", "yes", "true", "on")
MAX_TIMEOUT_S = 86400.0  # a day: anything longer is a typo, not a handshake
FALSE_WORDS = ("", "0", "no", "false", "off")


@dataclass(frozen=True)
class Settings:
    module: Path | None  # None: the embedded SoftHSM2 default
    token_label: str | None
    pin: str | None = field(repr=False)  # never in a repr: tracebacks, junit.xml
    profile: str | None  # emulation profile name or path
    reports: Path
    timeout_s: float
    keys: tuple[KeySpec, ...]
    clients: tuple[str, ...]
    clients_named: bool = False  # the user listed the clients: a missing one is an error
    java_home: str | None = None  # the default JDK: the first --java
    java_p11_config: tuple[str, ...] = ()
    java_homes: tuple[str, ...] = ()  # every --java, in order
    record: bool = True  # clients load the recording interposer
    spy: bool = False  # pkcs11-spy chained below the interposer
    allow_slot_overwrite: bool = False  # the user accepts replacing keys of a fixed-slot card
    opensc_cache: bool = True  # OpenSC modules: harness.token.opensc_conf
    warm: bool = False  # --p11-warm: harness.token.warm
    named_module: str | None = None  # --p11-module tpm2: harness.token.named_modules
    existing: bool = False  # --p11-existing: every key pair with a certificate, read-only
    key_uris: tuple[str, ...] = ()  # --p11-key: these keys, read-only
    wide: bool = False  # --p11-wide: the terminal matrix as one table

    @property
    def read_only(self) -> bool:
        """The keys already on the token, in read-only sessions: nothing is written."""
        return self.existing or bool(self.key_uris)

    def named_client(self, client: str) -> bool:
        """The user asked for this client (--p11-clients, or --java for the Java
        ones): a missing one is then an error, not a skip."""
        return self.clients_named or (client.startswith("java") and bool(self.java_home))

    def client_options(self) -> ClientOptions:
        """What the clients are built from (harness.clients.make_client)."""
        return ClientOptions(java_homes=self.java_homes, java_p11_config=self.java_p11_config,
                             read_only=self.read_only)


EMPTY_IS_GIVEN = ("p11_keys", "p11_clients")


def _pick(option: Option, cli: Mapping[str, object], ini: Mapping[str, object],
          env: Mapping[str, str]) -> str | None:
    if option.repeatable:  # lines, joined; the first source that has any wins
        for source in (cli, ini):
            value = source.get(option.name) or []
            lines = value.splitlines() if isinstance(value, str) else list(value)  # type: ignore[call-overload]
            if lines:
                return "\n".join(str(line) for line in lines)
        return None
    if option.name in EMPTY_IS_GIVEN and cli.get(option.name) == "":
        return ""  # `--p11-keys ""` is an empty list (an error), not the default
    for source in (cli, ini):
        value = source.get(option.name)
        if value not in (None, ""):
            return str(value)
    if option.env and env.get(option.env):
        return env[option.env]
    return option.default


def resolve(cli: Mapping[str, object], ini: Mapping[str, object],
            env: Mapping[str, str], base: Path | None = None) -> Settings:
    """Settings from the three sources; raises ConfigError on bad values.
    `base`: the directory a relative reports path is taken from (the
    reports path stays as given without it)."""
    if cli.get("p11_module") == "":
        raise ConfigError("--p11-module is empty: give the module's .so file, or leave the "
                          "option out for the throw-away SoftHSM2 token")
    raw = {o.name: _pick(o, cli, ini, env) for o in OPTIONS}
    if raw["p11_lab"]:  # the lab entry fills what the command line and ini leave open

        raw.update(lab_options(raw["p11_lab"], cli, ini, env, base))
    # a named module (tpm2) brings up its own throw-away token: no file, label or PIN
    named = raw["p11_module"] if is_named(raw["p11_module"] or "") else None
    module = Path(raw["p11_module"]).expanduser() if raw["p11_module"] and not named else None
    if module is not None:
        if not module.exists():
            raise ConfigError(
                f"PKCS#11 module {module} does not exist: check --p11-module / PKCS11_MODULE"
            )
        if not raw["p11_token_label"]:
            raise ConfigError(
                f"--p11-module {module} needs --p11-token-label (or PKCS11_TOKEN_LABEL): "
                "the harness never guesses which token to write to"
            )
        if raw["p11_pin"] is None:
            raise ConfigError(
                "--p11-module needs the user PIN: pass --p11-pin or set PKCS11_TOKEN_PIN"
            )
    if _flag(raw, "p11_no_record"):
        if raw["p11_profile"]:
            raise ConfigError("--p11-profile works inside the interposer: drop --p11-no-record")
        if _flag(raw, "p11_spy"):
            raise ConfigError("--p11-spy is chained below the interposer: drop --p11-no-record")
    if module is not None and module.is_dir():
        raise ConfigError(f"--p11-module {raw['p11_module']} is a directory: give the module's "
                          ".so file")
    timeout = parse_timeout(raw["p11_timeout"] or "")
    reports = Path(raw["p11_reports"] or "reports").expanduser()
    check_reports_dir(base / reports if base is not None else reports)
    java_homes = tuple(line.strip() for line in (raw["java"] or "").splitlines() if line.strip())
    key_uris = tuple(line.strip() for line in (raw["p11_key"] or "").splitlines()
                     if line.strip())
    existing = _flag(raw, "p11_existing")
    if (existing or key_uris) and module is None:
        raise ConfigError("--p11-existing and --p11-key test the keys already on a token: "
                          "name it with --p11-module, --p11-token-label and the PIN")
    if key_uris:

        for uri in key_uris:
            parse_key_uri(uri)
    return Settings(
        existing=existing,
        key_uris=key_uris,
        java_home=java_homes[0] if java_homes else None,
        java_homes=java_homes,
        java_p11_config=tuple(line for line in (raw["java_p11_config"] or "").splitlines()
                              if line.strip()),
        record=not _flag(raw, "p11_no_record"),
        spy=_flag(raw, "p11_spy"),
        wide=_flag(raw, "p11_wide"),
        allow_slot_overwrite=_flag(raw, "p11_allow_slot_overwrite"),
        opensc_cache=parse_cache_setting(raw["p11_opensc_cache"]),
        warm=_flag(raw, "p11_warm"),
        named_module=named,
        keys=parse_keys(raw["p11_keys"] or ""),
        clients=parse_clients(raw["p11_clients"] or "", java_homes),
        clients_named=(raw["p11_clients"] or "all").strip() != "all",
        module=module,
        token_label=raw["p11_token_label"],
        pin=raw["p11_pin"],
        profile=raw["p11_profile"],
        reports=base / reports if base is not None else reports,
        timeout_s=timeout,
    )


def parse_timeout(text: str) -> float:
    """`--p11-timeout`: seconds, finite, more than 0 and at most a day."""
    try:
        timeout = float(text)
    except ValueError:
        raise ConfigError(f"--p11-timeout must be a number of seconds, not {text!r}") from None
    if not math.isfinite(timeout) or timeout <= 0 or timeout > MAX_TIMEOUT_S:
        raise ConfigError(f"--p11-timeout must be a positive number of seconds up to "
                          f"{MAX_TIMEOUT_S:.0f}, not {text!r}")
    return timeout


def check_reports_dir(path: Path) -> None:
    """The reports directory must be a directory this process can write, or
    be creatable: its nearest existing ancestor a writable directory."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    what = "" if existing == path else f" (its ancestor {existing})"
    if not existing.is_dir():
        raise ConfigError(f"--p11-reports {path}{what} is not a directory: give a directory "
                          "for results.json and the logs")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--p11-reports {path}{what} is not writable: give a directory "
                          "you can write")


def _flag(raw: Mapping[str, str | None], name: str) -> bool:
    value = (raw[name] or "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ConfigError(f"--{name.replace('_', '-')} takes yes or no, not {raw[name]!r}")


def parse_clients(text: str, java_homes: tuple[str, ...] = ()) -> tuple[str, ...]:
    """`--p11-clients`: comma-separated client names, or `all` (with one
    java@N pair per further JDK found)."""

    known = client_names(java_homes)
    if text.strip() == "all":
        return known
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(
            f"unknown client {', '.join(unknown) or '(none given)'} in --p11-clients: "
            f"choose from {', '.join(known)} or 'all'"
        )
    return names
