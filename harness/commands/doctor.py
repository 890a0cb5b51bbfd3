"""`p11tls doctor`: what a module and its token offer for TLS client
authentication, before running anything.

Library and token information, the token's flags (PIN counters, read-only,
protected authentication path), the TLS-relevant mechanisms with their flags
and key sizes, the key pairs and certificates on it (public objects: no login;
with a PIN from PKCS11_TOKEN_PIN or --pin-file it logs in once, read-only), the
installed clients and their versions, and what follows (harness.verdict.predict):
notes on the mechanisms, and per matrix cell (client × key × TLS version, and
the server forcing rsa_pkcs1_sha256) the mechanism each installed client will
ask for, how many bytes, and whether it works. With --p11-profile the token is
read through the interposer as that profile emulates it, and the profile's
input cap and refused imports join the prediction. Nothing is written to the token.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.clients import client_names, make_client
from harness.commands.token_command import token_command
from harness.errors import ConfigError, HarnessError, TokenError
from harness.interposer.profile import Profile, load_profile
from harness.matrix.keys import KEYS, key_spec
from harness.pkcs11 import exception_return_code
from harness.process import read_bounded
from harness.token.existing_keys import discover
from harness.token.fixed_slots import slot_verdict
from harness.token.measurements import load_measurement
from harness.token.run_tokens import emulated_module
from harness.token.session import load_module, text_of, version_of
from harness.verdict.predict import Prediction, TokenFacts, case_id, notes, predict_matrix

TLS_MECHANISMS = (
    "RSA_PKCS", "RSA_PKCS_PSS", "RSA_X_509", "SHA256_RSA_PKCS", "SHA384_RSA_PKCS",
    "SHA512_RSA_PKCS", "SHA256_RSA_PKCS_PSS", "SHA384_RSA_PKCS_PSS", "SHA512_RSA_PKCS_PSS",
    "ECDSA", "ECDSA_SHA256", "ECDSA_SHA384", "ECDSA_SHA512", "EDDSA",
    "RSA_PKCS_KEY_PAIR_GEN", "EC_KEY_PAIR_GEN", "EC_EDWARDS_KEY_PAIR_GEN",
)

TOKEN_FLAGS = ("WRITE_PROTECTED", "LOGIN_REQUIRED", "USER_PIN_INITIALIZED",
               "PROTECTED_AUTHENTICATION_PATH", "USER_PIN_COUNT_LOW", "USER_PIN_FINAL_TRY",
               "USER_PIN_LOCKED", "USER_PIN_TO_BE_CHANGED", "TOKEN_INITIALIZED")
MECHANISM_FLAGS = ("HW", "SIGN", "VERIFY", "GENERATE_KEY_PAIR", "DIGEST")


def doctor_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="p11tls doctor",
        description="What a PKCS#11 module and token offer for TLS client authentication, "
        "and what each client will ask of it. Writes nothing; logs in (once, read-only) only "
        "when a PIN is given by PKCS11_TOKEN_PIN or --pin-file.")
    parser.add_argument("--p11-module", required=True, type=Path)
    parser.add_argument("--p11-token-label", default=None,
                        help="the token (default: every token present)")
    parser.add_argument("--pin-file", type=Path, default=None)
    parser.add_argument("--p11-profile", default=None, metavar="NAME|FILE",
                        help="read the token as this emulation profile makes it look")
    parser.add_argument("--p11-keys", default="rsa2048,p256,p384",
                        help="key types of the predicted cells (default: %(default)s; all)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return token_command("p11tls doctor", lambda: _doctor(args))


def _doctor(args: argparse.Namespace) -> int:
    keys = _keys(args.p11_keys)
    profile = None
    if args.p11_profile:

        profile = load_profile(args.p11_profile)
    report = inspect(args.p11_module.expanduser(), args.p11_token_label, _pin(args),
                     profile=profile, keys=keys)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _pin(args: argparse.Namespace) -> str | None:
    if args.pin_file is not None:
        try:
            return read_bounded(args.pin_file, 4096).decode("utf-8", errors="replace").strip()
        except OSError as exc:
            raise ConfigError(f"--pin-file {args.pin_file}: {exc.strerror}") from None
    return os.environ.get("PKCS11_TOKEN_PIN") or None


def _keys(text: str) -> list[str]:

    if text.strip() == "all":
        return list(KEYS)
    return [key_spec(k.strip()).name for k in text.split(",") if k.strip()]


def inspect(module: Path, label: str | None, pin: str | None, *,
            profile: Profile | None = None,
            keys: Sequence[str] = ("rsa2048", "p256", "p384")) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p11tls-doctor-") as tmp:
        load = module
        if profile is not None:  # the token as the clients would see it under the profile

            load, env = emulated_module(module, profile, Path(tmp))
            os.environ.update(env)
        return _inspect(module, load, label, pin, profile, keys)


def _inspect(module: Path, load: Path, label: str | None, pin: str | None,
             profile: Profile | None, keys: Sequence[str]) -> dict[str, Any]:
    from pkcs11 import Mechanism
    from pkcs11 import exceptions as p11exc
    from pkcs11.constants import MechanismFlag, TokenFlag


    lib = load_module(load)
    slots = lib.get_slots(token_present=True)
    tokens = [s.get_token() for s in slots]
    if label is not None:
        tokens = [t for t in tokens if text_of(t.label) == label]
        if not tokens:
            raise TokenError(f"no token labelled {label!r} in {module}")
    found, components = installed_clients()
    report: dict[str, Any] = {
        "module": str(module),
        "library": f"{text_of(lib.library_description)} {version_of(lib.library_version)}",
        "manufacturer": text_of(lib.manufacturer_id), "tokens": [],
        "clients": found,
        **({"profile": profile.label} if profile is not None else {}),
    }
    for token in tokens:
        slot = token.slot
        flags = int(token.flags)
        mechanisms: dict[str, Any] = {}
        offered = {m.name for m in slot.get_mechanisms()}
        for name in TLS_MECHANISMS:
            if name not in offered:
                continue
            info = slot.get_mechanism_info(Mechanism[name])
            mflags = int(info.flags)
            mechanisms[f"CKM_{name}"] = {
                "flags": [f for f in MECHANISM_FLAGS if mflags & int(MechanismFlag[f])],
                "key_sizes": [info.min_key_length, info.max_key_length]}
        identity = {"token_label": text_of(token.label), "model": text_of(token.model),
                    "manufacturer": text_of(token.manufacturer_id),
                    "serial": text_of(token.serial),
                    "firmware": version_of(getattr(token, "firmware_version", ""))}
        measured = load_measurement(identity)
        facts = TokenFacts.of(offered, profile, measurement=measured,
                              manufacturer=identity["manufacturer"],
                              write_protected=bool(flags & int(TokenFlag.WRITE_PROTECTED)))
        entry: dict[str, Any] = {
            "label": text_of(token.label), "model": text_of(token.model),
            "manufacturer": text_of(token.manufacturer_id), "serial": text_of(token.serial),
            "firmware": version_of(getattr(token, "firmware_version", "")),  # the device's
            "slot_firmware": version_of(getattr(slot, "firmware_version", "")),  # the reader's
            "flags": [f"CKF_{f}" for f in TOKEN_FLAGS if flags & int(TokenFlag[f])],
            "mechanisms": mechanisms,
            "all_mechanisms": len(offered),
            "provisioning": slot_verdict(identity),
            "measured": measured is not None and {"limits": measured.limits,
                                                  "imports": measured.imports},
            "predictions": [str(n) for n in notes({f"CKM_{m}" for m in offered})],
            "cells": [{"case_id": case_id(c), **c.to_json()} for c in predict_matrix(
                list(components), list(keys), facts, components)],
        }
        try:
            logged_in = pin is not None and not flags & int(
                TokenFlag.USER_PIN_LOCKED | TokenFlag.USER_PIN_FINAL_TRY)
            with token.open(rw=False, user_pin=pin if logged_in else None) as session:
                pairs = discover(session, all_pairs=True)
            entry["logged_in"] = logged_in
            entry["key_pairs"] = [k.describe() for k in pairs]
        except (p11exc.PinIncorrect, p11exc.PinLenRange, p11exc.PinInvalid,
                p11exc.PinLocked) as exc:
            # a wrong PIN is the user's to fix, not "0 key pairs": one line, exit 2
            raise TokenError(f"token {text_of(token.label)!r} refused the PIN "
                             f"({exception_return_code(exc)}); it was tried once and will not "
                             "be retried: check --pin-file / PKCS11_TOKEN_PIN") from None
        except p11exc.PKCS11Error as exc:
            entry["key_pairs_error"] = exception_return_code(exc) or "CKR_GENERAL_ERROR"
        report["tokens"].append(entry)
    return report


def installed_clients() -> tuple[dict[str, str], dict[str, dict[str, str | None]]]:
    """Each client: its version, or why it cannot run here; and for the clients
    that can, the versions of their parts (what the facts are keyed to)."""

    found: dict[str, str] = {}
    components: dict[str, dict[str, str | None]] = {}
    for name in client_names():
        client = make_client(name)
        reason = client.unavailable_reason()
        try:
            found[name] = f"not available: {reason}" if reason else client.version()
            if not reason:
                components[name] = client.components()
        except HarnessError as exc:
            found[name] = f"not available: {exc}"
    return found, components


def render(report: dict[str, Any]) -> str:
    lines = [f"module: {report['module']} ({report['library']}, {report['manufacturer']})"]
    for token in report["tokens"]:
        lines.append(f"token {token['label']!r}: {token['model']} by {token['manufacturer']}, "
                     f"serial {token['serial']}, firmware {token['firmware']}")
        lines.append(f"  flags: {' '.join(token['flags']) or '-'}")
        lines.append(f"  keys: {token['provisioning']}")
        lines.append(f"  {measured_line(token.get('measured'))}")
        lines.append(f"  TLS mechanisms ({token['all_mechanisms']} offered in all):")
        for name, info in token["mechanisms"].items():
            low, high = info["key_sizes"]
            lines.append(f"    {name:<28} {','.join(info['flags']):<34} keys {low}-{high}")
        pairs = token.get("key_pairs", [])
        how = "logged in, read-only" if token.get("logged_in") else "public objects, no login"
        lines.append(f"  key pairs with a certificate ({how}): {len(pairs)}")
        for key in pairs:
            lines.append(f"    {key['label']!r} CKA_ID {key['id']} {key['type']}, issuer "
                         f"{key['issuer']}")
        if token.get("key_pairs_error"):
            lines.append(f"    could not be read: {token['key_pairs_error']}")
        lines.append("  predictions:")
        lines += [f"    - {note}" for note in token["predictions"]] or ["    (none)"]
        lines += render_cells(token["cells"])
    if report.get("profile"):
        lines.insert(1, f"read as the {report['profile']}")
    lines.append("clients:")
    lines += [f"  {name:<20} {version}" for name, version in report["clients"].items()]
    return "\n".join(lines)


def measured_line(measured: Any) -> str:
    """What p11tls token-sweep measured on this token, or that nobody did."""
    if not measured:
        return ("input limits and private-key import: not advertised by the token and not "
                "measured; measure with p11tls token-sweep")
    limits = [f"{m} up to {v.get('largest_ok')} B"
              + (f" ({v.get('refused_rv')} from {v['smallest_refused']} B)"
                 if v.get("smallest_refused") else "")
              for m, v in sorted(measured["limits"].items())]
    imports = [f"{k} {rv}" for k, rv in sorted(measured["imports"].items())]
    return (f"measured by p11tls token-sweep: {'; '.join(limits) or 'no combined mechanism'}; "
            f"imports: {', '.join(imports) or 'not measured'}")


def render_cells(cells: list[dict[str, Any]]) -> list[str]:
    """One line per client × key × TLS version (× forced scheme): both
    provisionings on one line when they agree."""

    from collections import Counter

    counts = Counter(cell["outcome"] for cell in cells)
    lines = [f"  per cell ({len(cells)}: " + ", ".join(f"{n} {o}" for o, n in sorted(
                 counts.items())) + "; client, key, TLS, provisioning: mechanism, bytes -> "
             "outcome):"]
    seen: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for cell in cells:
        seen.setdefault((cell["client"], cell["key"], cell["tls"], cell["sigalgs"]),
                        []).append(cell)
    for (client, key, tls, sigalgs), group in seen.items():
        def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
            skip = ("provisioning", "case_id")
            return {k: v for k, v in a.items() if k not in skip} == {
                k: v for k, v in b.items() if k not in skip}
        shown = group[:1] if all(same(group[0], c) for c in group) else group
        for cell in shown:
            fields = {k: v for k, v in cell.items() if k != "case_id"}
            p = Prediction(**fields)
            prov = "any" if len(shown) < len(group) else p.provisioning
            forced = f" (server forces {sigalgs})" if sigalgs else ""
            result = p.outcome + (f" {p.error}" if p.error else "")
            lines.append(f"    {client:<19} {key:<8} TLS{tls} {prov:<8} "
                         f"{p.mechanism or '-'}, {p.bytes_text} -> {result}{forced}"
                         + (f"  [{p.why}]" if p.outcome != "ok" else ""))
    return lines
