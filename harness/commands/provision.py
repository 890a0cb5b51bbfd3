"""`p11tls provision`: put the matrix's keys on a lab token once, so nightly
runs use them read-only (`--p11-existing`); `--remove` takes exactly them away.

Each key is generated on the token under label and CKA_ID `p11tls-lab-<type>`
(e.g. `p11tls-lab-p256`) with a certificate from the lab CA (harness.tls.lab_ca).
The token rules of a run hold: the PIN is tried once (and not at all when the
token says the next wrong try locks it), fixed-slot cards are refused, one
process per token (the lock), and what is about to be created is written to a
journal first. A key already there is left as it is.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pkcs11 import Attribute
from pkcs11 import exceptions as p11exc

from harness.commands.token_command import token_command
from harness.errors import ConfigError, HarnessError
from harness.matrix.keys import Provisioning, parse_keys
from harness.process import read_bounded, signals_held
from harness.tls.lab_ca import LabCA
from harness.token.fixed_slots import fixed_slot_reason, override_in
from harness.token.journal import LAB_PREFIX, CleanupError, Journal, LeftObject, journal_dir
from harness.token.locking import TokenLock, token_key
from harness.token.provision import Provisioner, ProvisioningRefused
from harness.token.session import Token

DEFAULT_KEYS = "rsa2048,p256,p384"


def lab_label(key_name: str) -> str:
    return f"{LAB_PREFIX}{key_name}"


def lab_id(key_name: str) -> bytes:
    """The CKA_ID scheme: the label's bytes, so a lab key is recognised by both."""
    return lab_label(key_name).encode()


def is_lab_object(label: str, key_id: bytes) -> bool:
    return label.startswith(LAB_PREFIX) and key_id == label.encode()


def _lab_objects(token: Token, session: Any) -> dict[str, list[Any]]:
    """label -> the lab objects (key pair, certificate) on the token."""
    found: dict[str, list[Any]] = {}

    def scan() -> None:
        for obj in session.get_objects():
            try:
                label = str(obj[Attribute.LABEL] or "")
                key_id = bytes(obj[Attribute.ID] or b"")
            except (p11exc.PKCS11Error, KeyError, TypeError):
                continue
            if is_lab_object(label, key_id):
                found.setdefault(label, []).append(obj)

    token.call(scan, "C_FindObjects")
    return found


def _destroy(token: Token, label: str, objects: list[Any]) -> list[LeftObject]:
    left = []
    for obj in objects:
        try:
            token.call(obj.destroy, "C_DestroyObject")
        except (HarnessError, p11exc.PKCS11Error):
            left.append(LeftObject(label, label.encode().hex(), "lab object"))
    return left


def provision_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="p11tls provision",
        description="Put the matrix's keys and certificates (from the lab CA) on a lab token "
        "once, labelled p11tls-lab-<type>; nightly runs then use them read-only with "
        "--p11-existing. --remove takes exactly those objects away again. The PIN comes from "
        "PKCS11_TOKEN_PIN or --pin-file, never the command line.")
    parser.add_argument("--p11-module", required=True, type=Path)
    parser.add_argument("--p11-token-label", required=True)
    parser.add_argument("--pin-file", type=Path, default=None,
                        help="file holding the user PIN (default: $PKCS11_TOKEN_PIN)")
    parser.add_argument("--p11-keys", default=DEFAULT_KEYS,
                        help=f"key types, comma-separated, or 'all' (default {DEFAULT_KEYS})")
    parser.add_argument("--remove", action="store_true",
                        help="remove the lab keys and certificates (labels p11tls-lab-*)")
    parser.add_argument("--p11-allow-slot-overwrite", action="store_true",
                        help="provision on a fixed-slot card (its keys may be replaced)")
    parser.add_argument("--lab-ca-cert", type=Path, default=Path("certs/lab-ca.pem"),
                        help="the lab CA certificate (made on first use; default "
                        "certs/lab-ca.pem)")
    parser.add_argument("--lab-ca-key", type=Path, default=None,
                        help="the lab CA key (default $P11TLS_LAB_CA_KEY, else "
                        "~/.config/p11tls/lab-ca.key; made on first use, mode 0600)")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds allowed per call to the token")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return token_command("p11tls provision", lambda: _provision(args, _pin(args)))


def _pin(args: argparse.Namespace) -> str:
    if args.pin_file is not None:
        try:
            return read_bounded(args.pin_file, 4096).decode("utf-8", errors="replace").strip()
        except OSError as exc:
            raise ConfigError(f"--pin-file {args.pin_file}: {exc.strerror}") from None
    pin = os.environ.get("PKCS11_TOKEN_PIN")
    if not pin:
        raise ConfigError("the user PIN is needed: set PKCS11_TOKEN_PIN or give --pin-file")
    return pin


def _provision(args: argparse.Namespace, pin: str) -> int:
    module: Path = args.p11_module.expanduser()
    if not module.is_file():
        raise ConfigError(f"PKCS#11 module {module} does not exist: check --p11-module")
    specs = parse_keys(args.p11_keys)
    token = Token(module, args.p11_token_label, pin, timeout_s=args.timeout)
    lock = TokenLock(token_key(token.identity), f"token {token.label!r}")
    try:
        lock.acquire(lambda line: print(line, file=sys.stderr))
        if not args.remove and not args.p11_allow_slot_overwrite and not override_in(os.environ):
            reason = fixed_slot_reason(token.info().as_dict())
            if reason is not None:
                raise HarnessError(reason)
        session = token.session  # PIN flags first; one login
        present = _lab_objects(token, session)
        if args.remove:
            return _remove(token, present)
        ca = LabCA(args.lab_ca_cert, args.lab_ca_key)
        if ca.made:
            print(f"made the lab CA: certificate {ca.cert_path}, key {ca.key_path} (0600)")
        return _create(token, specs, present, ca)
    finally:
        token.close()
        lock.release()


def _remove(token: Token, present: dict[str, list[Any]]) -> int:
    left: list[LeftObject] = []
    count = 0
    for label, objects in sorted(present.items()):
        gone = _destroy(token, label, objects)
        left += gone
        count += len(objects) - len(gone)
        print(f"removed {label} ({len(objects) - len(gone)} objects)")
    if left:
        raise CleanupError(f"token {token.label!r}", left, "C_DestroyObject failed")
    print(f"removed {count} lab object{'s' * (count != 1)} from token {token.label!r}")
    return 0


def _create(token: Token, specs: Sequence[Any], present: dict[str, list[Any]],
            ca: LabCA) -> int:
    run_tag = secrets.token_hex(3)
    journal = Journal(journal_dir(token.identity), run_tag,
                      {"module": str(token.module_path), "token_label": token.label,
                       "serial": token.serial, "lab": True})
    made: list[str] = []
    clean = False
    with tempfile.TemporaryDirectory(prefix="p11tls-provision-") as tmp:
        provisioner = Provisioner(token, ca, Path(tmp), run_tag, journal=None)
        try:
            for spec in specs:
                label = lab_label(spec.name)
                if label in present:
                    if len(present[label]) < 3:
                        raise HarnessError(
                            f"{label} is on the token only in part ({len(present[label])} of 3 "
                            "objects): remove it with `p11tls provision --remove` and run again")
                    print(f"{label}\tCKA_ID {lab_id(spec.name).hex()}\t{spec.name}\talready there")
                    continue
                journal.intend(label, lab_id(spec.name).hex())
                made.append(label)
                provisioner.provision(spec, Provisioning.GENERATE, label=label,
                                      key_id=lab_id(spec.name))
                print(f"{label}\tCKA_ID {lab_id(spec.name).hex()}\t{spec.name}\tgenerated, "
                      f"certificate from {ca.cert.subject.rfc4514_string()}")
            clean = True
        except (ProvisioningRefused, HarnessError, p11exc.PKCS11Error, KeyboardInterrupt) as exc:
            # take away what this invocation made, nothing else (a signal too:
            # further ones are held meanwhile)
            with signals_held():
                now = _lab_objects(token, token.session)
                left = [o for label in made for o in _destroy(token, label, now.get(label, []))]
                journal.close(clean=not left)
            if left:
                raise CleanupError(f"token {token.label!r}", left, str(exc)) from None
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise HarnessError(f"provisioning stopped, nothing of it left on the token: "
                               f"{exc}") from None
        finally:
            if clean:
                journal.close(clean=True)
    print("the lab keys are on the token: run the matrix read-only with --p11-existing")
    return 0


if __name__ == "__main__":
    sys.exit(provision_main(sys.argv[1:]))
