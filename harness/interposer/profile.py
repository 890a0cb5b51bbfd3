"""Emulated-token profiles: which constrained token the interposer imitates on
top of the real module (docs/design.md, "The interposer": results under a
profile are labelled as an emulation, never as the device).

A profile is a TOML file, shipped in ``harness/profiles/NAME.toml`` or written
by the user; every section and key is optional::

    name = "picohsm-opensc"
    emulates = "Pico HSM through OpenSC's sc-hsm driver"
    source = "the public report the behaviour comes from"

    [mechanisms]
    hide = ["CKM_RSA_PKCS_PSS"]          # gone from the list and info; any use -> MECHANISM_INVALID
    add_combined = ["CKM_ECDSA_SHA256"]  # advertised; hashed on the host, CKM_ECDSA below

    [sign]
    max_input_bytes = 2048               # total input of one signing operation
    limit_mechanisms = ["CKM_ECDSA_SHA256"]  # default: every mechanism
    over_limit_rv = "CKR_GENERAL_ERROR"  # the default
    multipart = true                     # false: C_SignUpdate -> FUNCTION_NOT_SUPPORTED

    [create_object]
    refuse = [{ class = "CKO_PRIVATE_KEY", key_type = "CKK_EC", rv = "CKR_GENERAL_ERROR" }]
                                         # key_type omitted: any; rv default CKR_GENERAL_ERROR

    [pin]
    max_tries = 3                        # emulated user-PIN counter, one per client process
    token_flags = ["CKF_USER_PIN_COUNT_LOW"]  # ORed into C_GetTokenInfo's flags (also
                                         # CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED)

    [faults]
    latency_ms = { C_Sign = 150 }        # size queries (NULL buffer) are not delayed
    fail_after = { function = "C_Sign", calls = 20, rv = "CKR_DEVICE_REMOVED" }
    hang_after = { function = "C_SignFinal", calls = 3 }  # then it never returns
                                         # or a list of such tables; rv default CKR_DEVICE_REMOVED

`load_profile()` checks everything and refuses, with one line naming the file,
the key and what is allowed, what it does not know. `Profile.interposer_lines()`
turns a profile into the configuration lines of the C interposer
(harness/interposer/interposer.c lists them). Mechanism, return-code, class
and key-type names come from the one vocabulary, `harness.pkcs11.vocabulary`.

What the emulation cannot do: `add_combined` covers ECDSA only (the hashed RSA
mechanisms, CKM_SHA*_RSA_PKCS(_PSS), are the real module's own; SoftHSM has
them); the PIN counter lives in each client process (a new process starts with
all tries); an operation the interposer fails is ended on the real module by
finishing it into a scratch buffer.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

from harness.errors import ConfigError
from harness.pkcs11.vocabulary import KEY_TYPES, MECHANISMS, OBJECT_CLASSES, RETURN_CODES
from harness.process import read_bounded

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "COMBINABLE",
    "PKCS11_FUNCTIONS",
    "PROFILES_DIR",
    "CreateObjectRules",
    "FailAfter",
    "FaultRules",
    "MechanismRules",
    "PinRules",
    "Profile",
    "RefuseRule",
    "SignRules",
    "load_profile",
    "shipped_profiles",
]

MAX_PROFILE_BYTES = 1 << 20  # a profile is a page of TOML
PROFILES_DIR = Path(__file__).parents[1] / "profiles"

# What the interposer can add: it hashes on the host and signs with CKM_ECDSA.
COMBINABLE = ("CKM_ECDSA_SHA1", "CKM_ECDSA_SHA224", "CKM_ECDSA_SHA256", "CKM_ECDSA_SHA384",
              "CKM_ECDSA_SHA512")

# The PKCS#11 2.40 functions the interposer wraps (faults may name any of them).
PKCS11_FUNCTIONS = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetSlotList", "C_GetSlotInfo",
    "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken", "C_InitPIN",
    "C_SetPIN", "C_OpenSession", "C_CloseSession", "C_CloseAllSessions", "C_GetSessionInfo",
    "C_GetOperationState", "C_SetOperationState", "C_Login", "C_Logout", "C_CreateObject",
    "C_CopyObject", "C_DestroyObject", "C_GetObjectSize", "C_GetAttributeValue",
    "C_SetAttributeValue", "C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal",
    "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate", "C_EncryptFinal", "C_DecryptInit",
    "C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal", "C_DigestInit", "C_Digest",
    "C_DigestUpdate", "C_DigestKey", "C_DigestFinal", "C_SignInit", "C_Sign", "C_SignUpdate",
    "C_SignFinal", "C_SignRecoverInit", "C_SignRecover", "C_VerifyInit", "C_Verify",
    "C_VerifyUpdate", "C_VerifyFinal", "C_VerifyRecoverInit", "C_VerifyRecover",
    "C_DigestEncryptUpdate", "C_DecryptDigestUpdate", "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate", "C_GenerateKey", "C_GenerateKeyPair", "C_WrapKey", "C_UnwrapKey",
    "C_DeriveKey", "C_SeedRandom", "C_GenerateRandom", "C_GetFunctionStatus",
    "C_CancelFunction", "C_WaitForSlotEvent",
)

MECHANISM_VALUES: dict[str, int] = dict(MECHANISMS.values)
RETURN_CODE_VALUES: dict[str, int] = dict(RETURN_CODES.values)
_CLASS_VALUES = {name: value for value, name in OBJECT_CLASSES.names.items()}
_KEY_TYPE_VALUES = {name: value for value, name in KEY_TYPES.names.items()}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_MAX_LATENCY_MS = 600_000  # the C side's bound as well
_MAX_ULONG = 2**32 - 1  # CK_ULONG is at least 32 bits everywhere
PIN_FLAG_VALUES = {"CKF_USER_PIN_COUNT_LOW": 0x10000, "CKF_USER_PIN_FINAL_TRY": 0x20000,
                   "CKF_USER_PIN_LOCKED": 0x40000}


@dataclass(frozen=True)
class MechanismRules:
    """[mechanisms]: what the emulated token offers instead of the real one's list."""

    hide: tuple[str, ...] = ()
    add_combined: tuple[str, ...] = ()


@dataclass(frozen=True)
class SignRules:
    """[sign]: how much one signing operation may take, and in how many parts."""

    max_input_bytes: int | None = None
    limit_mechanisms: tuple[str, ...] | None = None  # None: every mechanism
    over_limit_rv: str = "CKR_GENERAL_ERROR"
    multipart: bool = True


@dataclass(frozen=True)
class RefuseRule:
    """One [[create_object.refuse]] entry; key_type None matches any key type."""

    object_class: str
    key_type: str | None = None
    rv: str = "CKR_GENERAL_ERROR"


@dataclass(frozen=True)
class CreateObjectRules:
    """[create_object]: imports (C_CreateObject) the emulated token refuses."""

    refuse: tuple[RefuseRule, ...] = ()


@dataclass(frozen=True)
class PinRules:
    """[pin]: the emulated user-PIN retry counter (None: the real token's)."""

    max_tries: int | None = None
    token_flags: tuple[str, ...] = ()  # CKF_USER_PIN_* the token reports, C_Login unchanged


@dataclass(frozen=True)
class TokenDescription:
    """[token]: what C_GetTokenInfo says the token is (None: the real one's)."""

    model: str | None = None  # at most 16 bytes, e.g. OpenSC's "PKCS#15 emulated"
    manufacturer: str | None = None  # at most 32 bytes
    firmware: str | None = None  # CK_TOKEN_INFO.firmwareVersion, "MAJOR.MINOR"


@dataclass(frozen=True)
class FailAfter:
    """After `calls` successful calls of `function`, every further one returns `rv`."""

    function: str
    calls: int
    rv: str = "CKR_DEVICE_REMOVED"


@dataclass(frozen=True)
class FaultRules:
    """[faults]: latency per function (ms), failures after N calls, and a
    function that never returns after N calls (a device that stopped answering)."""

    latency_ms: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}),
                                          hash=False)
    fail_after: tuple[FailAfter, ...] = ()
    hang_after: tuple[tuple[str, int], ...] = ()  # (function, calls)


@dataclass(frozen=True)
class Profile:
    """One emulated token. Results under a profile are an emulation of
    `emulates`, never results of that device (see `label`)."""

    name: str
    emulates: str
    source: str
    path: Path
    mechanisms: MechanismRules = MechanismRules()
    sign: SignRules = SignRules()
    create_object: CreateObjectRules = CreateObjectRules()
    pin: PinRules = PinRules()
    faults: FaultRules = FaultRules()
    token: TokenDescription = TokenDescription()

    @property
    def label(self) -> str:
        """How reports name results under this profile."""
        what = self.emulates or "an unnamed token"
        return f"emulation of {what} (profile {self.name})"

    def interposer_lines(self) -> list[str]:
        """The interposer's configuration lines for this profile, numbers with
        their names as comments (``hide 0xd # CKM_RSA_PKCS_PSS``)."""
        lines = [_mech_line("hide", m) for m in self.mechanisms.hide]
        lines += [_mech_line("add_combined", m) for m in self.mechanisms.add_combined]
        sign = self.sign
        if sign.max_input_bytes is not None:
            lines.append(f"sign_max_input {sign.max_input_bytes}")
            lines += [_mech_line("sign_limit_mechanism", m) for m in sign.limit_mechanisms or ()]
            lines.append(f"sign_over_limit_rv {RETURN_CODE_VALUES[sign.over_limit_rv]:#x}"
                         f" # {sign.over_limit_rv}")
        if not sign.multipart:
            lines.append("sign_multipart no")
        for rule in self.create_object.refuse:
            key_type = "any" if rule.key_type is None else f"{_KEY_TYPE_VALUES[rule.key_type]:#x}"
            lines.append(
                f"refuse_create {_CLASS_VALUES[rule.object_class]:#x} {key_type} "
                f"{RETURN_CODE_VALUES[rule.rv]:#x} # {rule.object_class} "
                f"{rule.key_type or 'any'} {rule.rv}"
            )
        if self.pin.max_tries is not None:
            lines.append(f"pin_max_tries {self.pin.max_tries}")
        if self.pin.token_flags:
            lines.append("token_pin_flags "
                         + " ".join(f"{PIN_FLAG_VALUES[f]:#x}" for f in self.pin.token_flags)
                         + f" # {' '.join(self.pin.token_flags)}")
        if self.token.model:
            lines.append(f"token_model {self.token.model}")
        if self.token.manufacturer:
            lines.append(f"token_manufacturer {self.token.manufacturer}")
        if self.token.firmware:
            lines.append(f"token_firmware {self.token.firmware}")
        lines += [f"latency {fn} {ms}" for fn, ms in self.faults.latency_ms.items() if ms]
        lines += [f"fail_after {f.function} {f.calls} {RETURN_CODE_VALUES[f.rv]:#x} # {f.rv}"
                  for f in self.faults.fail_after]
        lines += [f"hang_after {fn} {calls}" for fn, calls in self.faults.hang_after]
        return lines

    def describe(self) -> list[str]:
        """What the emulated token does differently, one behaviour per line."""
        out = []
        m, s = self.mechanisms, self.sign
        if m.hide:
            out.append(f"hides {', '.join(m.hide)} (C_*Init -> CKR_MECHANISM_INVALID)")
        if m.add_combined:
            out.append(f"advertises {', '.join(m.add_combined)} (hashed on the host, "
                       "CKM_ECDSA on the real token)")
        if s.max_input_bytes is not None:
            which = ", ".join(s.limit_mechanisms) if s.limit_mechanisms else "every mechanism"
            out.append(f"fails a signing operation past {s.max_input_bytes} input bytes with "
                       f"{s.over_limit_rv} ({which})")
        if not s.multipart:
            out.append("refuses multi-part signing (C_SignUpdate -> CKR_FUNCTION_NOT_SUPPORTED)")
        for rule in self.create_object.refuse:
            out.append(f"refuses C_CreateObject of {rule.object_class}/"
                       f"{rule.key_type or 'any key type'} with {rule.rv}")
        if self.pin.max_tries is not None:
            out.append(f"locks the user PIN after {self.pin.max_tries} wrong tries "
                       "(counted per client process)")
        if self.pin.token_flags:
            out.append(f"reports {', '.join(self.pin.token_flags)} in its token flags")
        if self.token.model or self.token.manufacturer:
            out.append(f"says it is {self.token.model or '(the real model)'} by "
                       f"{self.token.manufacturer or '(the real manufacturer)'}")
        if self.token.firmware:
            out.append(f"says its firmware is {self.token.firmware}")
        for fn, ms in self.faults.latency_ms.items():
            out.append(f"takes {ms} ms longer for each {fn}")
        for f in self.faults.fail_after:
            out.append(f"returns {f.rv} from {f.function} after {f.calls} successful calls")
        for fn, calls in self.faults.hang_after:
            out.append(f"never returns from {fn} after {calls} successful calls")
        return out or ["behaves like the real token (nothing emulated)"]


def _mech_line(key: str, name: str) -> str:
    return f"{key} {MECHANISM_VALUES[name]:#x} # {name}"


# ------------------------------------------------------------------ loading


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (``picohsm-opensc``), or the user's TOML file by
    path (anything with a ``/`` or ending in ``.toml``)."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith(".toml"):
        return _load_file(Path(name_or_path))
    path = PROFILES_DIR / f"{text}.toml"
    if not path.is_file():
        shipped = ", ".join(p.stem for p in _shipped_paths()) or "none"
        raise ConfigError(
            f"no shipped emulation profile {text!r} (shipped: {shipped}); give a path to a "
            "TOML file for a profile of your own"
        )
    return _load_file(path)


def shipped_profiles() -> list[Profile]:
    """Every profile in harness/profiles, by name."""
    return [_load_file(p) for p in _shipped_paths()]


def _shipped_paths() -> list[Path]:
    return sorted(PROFILES_DIR.glob("*.toml"))


def _load_file(path: Path) -> Profile:
    try:
        data = tomllib.loads(read_bounded(path, MAX_PROFILE_BYTES).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read emulation profile {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"emulation profile {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"emulation profile {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"emulation profile {path} is nested too deeply") from None
    return _Reader(path).profile(data)


_T = TypeVar("_T")


class _Reader:
    """Checks one profile's data; every error names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str, allowed: str) -> NoReturn:
        raise ConfigError(f"emulation profile {self.path}: {key}: {problem}; allowed: {allowed}")

    # ------------------------------------------------------------ shapes

    def table(self, data: Mapping[str, Any], key: str, where: str,
              known: Sequence[str]) -> Mapping[str, Any]:
        """data[key] as a table (empty when absent) with only `known` keys."""
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.fail(where, f"expected a table, got {_shown(value)}",
                      f"a table with the keys {', '.join(known)}")
        self.keys(value, where, known)
        return value

    def keys(self, table: Mapping[str, Any], where: str, known: Sequence[str]) -> None:
        for key in table:
            if key not in known:
                self.fail(_join(where, key), "unknown key" + _did_you_mean(key, known),
                          ", ".join(known))

    def typed(self, value: Any, key: str, kind: type[_T], what: str) -> _T:
        # bool is an int in Python; a TOML `true` is never a number here.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(key, f"expected {what}, got {_shown(value)}", what)
        return value

    def integer(self, value: Any, key: str, low: int, high: int) -> int:
        what = f"an integer from {low} to {high}"
        number = self.typed(value, key, int, what)
        if not low <= number <= high:
            self.fail(key, f"{number} is out of range", what)
        return number

    def text(self, value: Any, key: str) -> str:
        return self.typed(value, key, str, "a string")

    def names(self, value: Any, key: str, check: Any) -> tuple[str, ...]:
        items = self.typed(value, key, list, "a list of names")
        return tuple(check(item, f"{key}[{i}]") for i, item in enumerate(items))

    def one_of(self, value: Any, key: str, table: Iterable[str], kind: str, names: str,
               list_all: bool) -> str:
        """A name from `table` (a `kind`, e.g. "mechanism"; `names` says what
        they look like, e.g. "CKM_ names"). Small tables are listed whole in
        the error, large ones by count and the closest names."""
        choices = sorted(table)
        if list_all:
            allowed = ", ".join(choices)
        else:
            examples = ", ".join(difflib.get_close_matches(str(value), choices, 3, 0.5)
                                 or choices[:3])
            allowed = f"one of the {len(choices)} {names} the harness knows, e.g. {examples}"
        name = self.typed(value, key, str, f"a {kind} name")
        if name not in table:
            self.fail(key, f"unknown {kind} {name!r}" + _did_you_mean(name, choices), allowed)
        return name

    def mechanism(self, value: Any, key: str) -> str:
        return self.one_of(value, key, MECHANISM_VALUES, "mechanism", "CKM_ names", False)

    def error_code(self, value: Any, key: str) -> str:
        name = self.one_of(value, key, RETURN_CODE_VALUES, "return code", "CKR_ names", False)
        if name == "CKR_OK":
            self.fail(key, "CKR_OK is not a failure", "a CKR_ error code, e.g. CKR_GENERAL_ERROR")
        return name

    # ---------------------------------------------------------- sections

    def profile(self, data: Mapping[str, Any]) -> Profile:
        self.keys(data, "", ("name", "emulates", "source", "mechanisms", "sign",
                             "create_object", "pin", "faults", "token"))
        name = self.text(data.get("name", self.path.stem), "name")
        if not _NAME_RE.match(name):
            self.fail("name", f"{name!r} is not a plain name",
                      "letters, digits, '.', '_' and '-', starting with a letter or digit")
        profile = Profile(
            name=name,
            emulates=self.text(data.get("emulates", ""), "emulates"),
            source=self.text(data.get("source", ""), "source"),
            path=self.path,
            mechanisms=self.mechanisms(data),
            sign=self.sign(data),
            create_object=self.create_object(data),
            pin=self.pin(data),
            faults=self.faults(data),
            token=self.token(data),
        )
        both = set(profile.mechanisms.hide) & set(profile.mechanisms.add_combined)
        if both:
            self.fail("mechanisms.add_combined", f"{', '.join(sorted(both))} is also hidden",
                      "a mechanism either hidden or added, not both")
        return profile

    def mechanisms(self, data: Mapping[str, Any]) -> MechanismRules:
        t = self.table(data, "mechanisms", "mechanisms", ("hide", "add_combined"))
        hide = self.names(t.get("hide", []), "mechanisms.hide", self.mechanism)

        def combinable(value: Any, key: str) -> str:
            name = self.typed(value, key, str, "a CKM_ name")
            if name not in COMBINABLE:
                self.fail(key, f"{name!r} cannot be added (the interposer hashes and signs "
                          "with CKM_ECDSA; hashed RSA mechanisms are the real module's own)",
                          ", ".join(COMBINABLE))
            return name

        added = self.names(t.get("add_combined", []), "mechanisms.add_combined", combinable)
        return MechanismRules(hide=hide, add_combined=added)

    def sign(self, data: Mapping[str, Any]) -> SignRules:
        t = self.table(data, "sign", "sign",
                       ("max_input_bytes", "limit_mechanisms", "over_limit_rv", "multipart"))
        limit = t.get("max_input_bytes")
        if limit is not None:
            limit = self.integer(limit, "sign.max_input_bytes", 0, _MAX_ULONG)
        mechs = None
        if "limit_mechanisms" in t:
            mechs = self.names(t["limit_mechanisms"], "sign.limit_mechanisms", self.mechanism)
            if not mechs:
                self.fail("sign.limit_mechanisms", "empty list",
                          "one or more CKM_ names; leave the key out to limit every mechanism")
        rv = self.error_code(t.get("over_limit_rv", SignRules.over_limit_rv),
                             "sign.over_limit_rv")
        for key in ("limit_mechanisms", "over_limit_rv"):
            if key in t and limit is None:
                self.fail(f"sign.{key}", "given without sign.max_input_bytes",
                          "this key only together with max_input_bytes")
        multipart = self.typed(t.get("multipart", True), "sign.multipart", bool,
                               "true or false")
        return SignRules(max_input_bytes=limit, limit_mechanisms=mechs, over_limit_rv=rv,
                         multipart=multipart)

    def create_object(self, data: Mapping[str, Any]) -> CreateObjectRules:
        t = self.table(data, "create_object", "create_object", ("refuse",))
        entries = self.typed(t.get("refuse", []), "create_object.refuse", list,
                             "a list of tables {class, key_type, rv}")
        rules = []
        for i, entry in enumerate(entries):
            where = f"create_object.refuse[{i}]"
            entry = self.table({"entry": entry}, "entry", where, ("class", "key_type", "rv"))
            if "class" not in entry:
                self.fail(where, "no class", ", ".join(sorted(_CLASS_VALUES)))
            cls = self.one_of(entry["class"], f"{where}.class", _CLASS_VALUES, "object class",
                              "CKO_ names", True)
            key_type = None
            if "key_type" in entry:
                key_type = self.one_of(entry["key_type"], f"{where}.key_type", _KEY_TYPE_VALUES,
                                       "key type", "CKK_ names", True)
            rv = self.error_code(entry.get("rv", RefuseRule.rv), f"{where}.rv")
            rules.append(RefuseRule(object_class=cls, key_type=key_type, rv=rv))
        return CreateObjectRules(refuse=tuple(rules))

    def pin(self, data: Mapping[str, Any]) -> PinRules:
        t = self.table(data, "pin", "pin", ("max_tries", "token_flags"))
        tries = t.get("max_tries")
        if tries is not None:
            tries = self.integer(tries, "pin.max_tries", 1, 255)

        def pin_flag(value: Any, key: str) -> str:
            return self.one_of(value, key, PIN_FLAG_VALUES, "token PIN flag", "CKF_ names", True)

        flags = self.names(t.get("token_flags", []), "pin.token_flags", pin_flag)
        return PinRules(max_tries=tries, token_flags=tuple(dict.fromkeys(flags)))

    def token(self, data: Mapping[str, Any]) -> TokenDescription:
        t = self.table(data, "token", "token", ("model", "manufacturer", "firmware"))
        found: dict[str, str] = {}
        for key, most in (("model", 16), ("manufacturer", 32)):
            if key in t:
                text = self.text(t[key], f"token.{key}")
                # The C side takes the rest of the line as the text, '#' and all
                # (no comment follows a text); blanks at either end would be lost.
                if (not 0 < len(text.encode()) <= most or not text.isprintable()
                        or text != text.strip()):
                    self.fail(f"token.{key}", f"{text!r} is not a {key}",
                              f"1 to {most} bytes of printable UTF-8, no blank at either end")
                found[key] = text
        if "firmware" in t:
            text = self.text(t["firmware"], "token.firmware")
            parts = text.split(".")
            if len(parts) != 2 or not all(p.isdigit() and int(p) <= 255 for p in parts):
                self.fail("token.firmware", f"{text!r} is not a version",
                          "\"MAJOR.MINOR\", each 0 to 255, e.g. \"6.6\"")
            found["firmware"] = text
        return TokenDescription(**found)

    def function(self, value: Any, key: str) -> str:
        return self.one_of(value, key, PKCS11_FUNCTIONS, "PKCS#11 function",
                           "PKCS#11 2.40 functions", False)

    def faults(self, data: Mapping[str, Any]) -> FaultRules:
        t = self.table(data, "faults", "faults", ("latency_ms", "fail_after", "hang_after"))
        latency = self.typed(t.get("latency_ms", {}), "faults.latency_ms", dict,
                             "a table of C_ function = milliseconds")
        delays = {}
        for fn, ms in latency.items():
            self.function(fn, f"faults.latency_ms.{fn}")
            delays[fn] = self.integer(ms, f"faults.latency_ms.{fn}", 0, _MAX_LATENCY_MS)
        raw = t.get("fail_after", [])
        entries = [raw] if isinstance(raw, dict) else raw
        self.typed(entries, "faults.fail_after", list,
                   "a table {function, calls, rv} or a list of them")
        fails: list[FailAfter] = []
        for i, entry in enumerate(entries):
            where = "faults.fail_after" + ("" if isinstance(raw, dict) else f"[{i}]")
            entry = self.table({"entry": entry}, "entry", where, ("function", "calls", "rv"))
            for key in ("function", "calls"):
                if key not in entry:
                    self.fail(where, f"no {key}", "a table {function, calls, rv}")
            fn = self.function(entry["function"], f"{where}.function")
            if any(f.function == fn for f in fails):
                self.fail(f"{where}.function", f"{fn} has a fail_after already",
                          "one fail_after per function")
            calls = self.integer(entry["calls"], f"{where}.calls", 0, _MAX_ULONG)
            rv = self.error_code(entry.get("rv", FailAfter.rv), f"{where}.rv")
            fails.append(FailAfter(function=fn, calls=calls, rv=rv))
        hangs: list[tuple[str, int]] = []
        if "hang_after" in t:
            where = "faults.hang_after"
            entry = self.table({"entry": t["hang_after"]}, "entry", where, ("function", "calls"))
            for key in ("function", "calls"):
                if key not in entry:
                    self.fail(where, f"no {key}", "a table {function, calls}")
            hangs.append((self.function(entry["function"], f"{where}.function"),
                          self.integer(entry["calls"], f"{where}.calls", 0, _MAX_ULONG - 1)))
        return FaultRules(latency_ms=MappingProxyType(delays), fail_after=tuple(fails),
                          hang_after=tuple(hangs))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _shown(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "list",
            dict: "table"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), 1, 0.6)
    return f" (did you mean {close[0]}?)" if close else ""
