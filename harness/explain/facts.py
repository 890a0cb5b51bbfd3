"""What the harness has measured, as explain needs it: the known failures
and the outcomes under each emulation profile, with their reasons.

The data files are the one source of truth (harness/data/known_failures.toml,
harness/data/outcomes/PROFILE.toml, harness/data/modules/MODULE.toml; their
keys are described in harness/verdict/expectations.py). verdict/ reads them
into its matching model; explain sits below verdict in the layers, so this
reads the few keys it needs from the same files.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.interposer.profile import Profile, load_profile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DATA = Path(__file__).parents[1] / "data"


@dataclass(frozen=True)
class Fact:
    """One measured entry: these clients with these keys (and TLS versions)."""

    source: str  # "known failure", "profile NAME", "module NAME"
    profile: str | None
    clients: tuple[str, ...]
    keys: tuple[str, ...]  # empty: every key
    tls: tuple[str, ...]  # empty: both versions
    provisioning: tuple[str, ...]  # empty: both (generate, import)
    outcome: str  # "fail" or "ok" ("ok" entries name the signing call)
    error: str | None
    reason: str
    mechanism: str | None
    input_bytes: int | None  # the measured input (or its lower bound)
    parts: int | None = None  # C_SignUpdate calls (0: one C_Sign)

    def fits(self, client: str | None, key: str | None, tls: str | None) -> bool:
        """True if nothing known about the case contradicts this entry."""
        return ((client is None or not self.clients or client in self.clients)
                and (key is None or not self.keys or key in self.keys)
                and (tls is None or not self.tls or tls in self.tls))


def _entries(path: Path, source: str, profile: str | None) -> list[Fact]:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []  # verdict/ reports a broken data file; explain just knows less
    out = []
    for entry in data.get("expect", ()):
        outcome = str(entry.get("outcome", "ok"))
        size = entry.get("input_bytes", entry.get("input_bytes_min"))
        out.append(Fact(
            source=source, profile=profile,
            clients=tuple(entry.get("clients", ())), keys=tuple(entry.get("keys", ())),
            tls=tuple(entry.get("tls", ())), provisioning=tuple(entry.get("provisioning", ())),
            outcome=outcome, error=entry.get("error"),
            reason=str(entry.get("reason", "")), mechanism=entry.get("mechanism"),
            input_bytes=size if isinstance(size, int) else None,
            parts=entry.get("parts") if isinstance(entry.get("parts"), int) else None,
        ))
    return out


@functools.lru_cache(maxsize=1)
def all_facts() -> tuple[Fact, ...]:
    facts = _entries(DATA / "expected_mechanisms.toml", "default stack", None)
    facts += _entries(DATA / "known_failures.toml", "known failure", None)
    for path in sorted((DATA / "outcomes").glob("*.toml")):
        facts += _entries(path, f"profile {path.stem}", path.stem)
    for path in sorted((DATA / "modules").glob("*.toml")):
        facts += _entries(path, f"module {path.stem}", None)
    return tuple(facts)


CREATING = {"C_CreateObject", "C_GenerateKeyPair", "C_GenerateKey"}
PROVISIONING = "provisioning: "
CREATING_NAMED = re.compile(r"C_CreateObject|C_GenerateKeyPair")  # in a reason: provisioning
IMPORT_WORDS = re.compile(r"(?i)\bimport|CreateObject|GenerateKeyPair|keypairgen")


def failures(rv: str | None, fn: str | None, client: str | None, key: str | None,
             tls: str | None, text: str = "") -> list[Fact]:
    """The measured failures this case fits: the same return code at the same
    stage (provisioning or handshake), or the entry's error message in the
    text, and no contradicting client, key or TLS version. With nothing known
    about the client nothing is matched (a return code alone says too little)."""
    if client is None:
        return []
    out = []
    for f in all_facts():
        if f.outcome != "fail" or not f.fits(client, key, tls):
            continue
        error = f.error or ""
        if error.startswith(PROVISIONING) or CREATING_NAMED.search(f.reason):
            # a text that names no function must speak of an import or generation
            fits = rv == error.removeprefix(PROVISIONING) and (
                fn in CREATING or (fn in (None, "C_?") and IMPORT_WORDS.search(text) is not None))
        elif error.startswith("CKR_"):
            fits = rv == error and fn not in CREATING
        elif error:
            fits = error in text
        else:  # a failure before any PKCS#11 call: only a text without a failing call
            fits = rv is None and key is not None
        if fits:
            out.append(f)
    return out


def signing_call(client: str | None, key: str | None, tls: str | None) -> Fact | None:
    """What the client asks the token for with this key, measured on the
    default stack (expected_mechanisms.toml); only with client and key known."""
    if client is None or key is None:
        return None
    return next((f for f in all_facts() if f.source == "default stack" and f.mechanism
                 and f.fits(client, key, tls) and f.clients and f.keys), None)


def workaround(fact: Fact, key: str | None) -> Fact | None:
    """A measured passing entry of the same profile for a sibling client
    (java-nocombined beside java): the workaround, measured."""
    siblings = {"java": "java-nocombined"}
    other = next((siblings[c] for c in fact.clients if c in siblings), None)
    if other is None:
        return None
    for f in all_facts():
        if (f.profile == fact.profile and f.outcome == "ok" and other in f.clients
                and (key is None or key in f.keys)):
            return f
    return None


@functools.cache
def profile(name: str) -> Profile | None:
    try:
        return load_profile(name)
    except Exception:  # noqa: BLE001 - a broken profile only means less to say here
        return None


def limit_profiles(rv: str | None, mechanism: str | None) -> list[Profile]:
    """Shipped profiles that refuse a signature over their input limit with
    this return code (and for this mechanism, when known)."""
    out = []
    for path in sorted((DATA.parent / "profiles").glob("*.toml")):
        found = profile(path.stem)
        sign = found.sign if found is not None else None
        if found is None or sign is None or sign.max_input_bytes is None:
            continue
        if rv is not None and sign.over_limit_rv != rv:
            continue
        if mechanism and sign.limit_mechanisms and mechanism not in sign.limit_mechanisms:
            continue
        out.append(found)
    return out


def first_sentence(text: str) -> str:
    text = " ".join(text.split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def names_of(profiles: Sequence[Profile]) -> list[str]:
    return [p.name for p in profiles]


def refusing_profiles(object_class: str | None, key_type: str | None,
                      rv: str | None) -> list[Profile]:
    """Shipped profiles that refuse this import (C_CreateObject) with this code."""
    out = []
    for path in sorted((DATA.parent / "profiles").glob("*.toml")):
        found = profile(path.stem)
        if found is None:
            continue
        if any(r.rv == rv and r.object_class == (object_class or r.object_class)
               and (r.key_type is None or key_type in (None, r.key_type))
               for r in found.create_object.refuse):
            out.append(found)
    return out
