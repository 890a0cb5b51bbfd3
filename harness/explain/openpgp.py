"""Seed 000: OpenSC's OpenPGP driver refuses an EC private-key import through
its PKCS#11 module, depending on the OpenSC version.

Checked in OpenSC's sources: up to 0.26.1, `pgp_init` in
src/libopensc/card-openpgp.c registers the full algorithm list of a card whose
algorithm attributes can be changed (EXT_CAP_ALG_ATTR_CHANGEABLE: OpenPGP 2.x
cards such as Gnuk and the Nitrokey Start) only when
`strcmp(card->ctx->app_name, "pkcs15-init") == 0`; through opensc-pkcs11 only
the key types currently set in the card's key slots count. An import of a
P-256 key then fails in pkcs15-lib.c's `check_key_compatibility` (-1406,
SC_ERROR_OBJECT_NOT_VALID), `sc_pkcs15init_store_private_key` logs "Card does
not support this key for crypto" (-1503, SC_ERROR_INCOMPATIBLE_KEY) and
C_CreateObject returns CKR_GENERAL_ERROR. OpenSC 0.27.0 dropped the
`pkcs15-init` condition (commit bce7f374d, 2024-09-14). Debian 12 ships
OpenSC 0.23, Debian 13 0.26.1: both have it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from harness.explain.model import Call

FIXED_IN = (0, 27, 0)
LAST_AFFECTED = "0.26.1"
# The OpenSC debug log's own evidence of the refusal.
REFUSAL = re.compile(r"check_key_compatibility: returning with: -1406|-1503|"
                     r"Card does not support this key for crypto")
OPENPGP = re.compile(r"card-openpgp|pkcs15-openpgp|\bOpenPGP\b|\bopenpgp\b|Gnuk|Nitrokey Start",
                     re.I)
VERSION = re.compile(r"OpenSC[- ](?:version[: ]+)?(\d+)\.(\d+)(?:\.(\d+))?")
WORKAROUNDS = (
    "Workarounds that work: generate the key on the card (C_GenerateKeyPair, `pkcs11-tool "
    "--keypairgen --key-type EC:prime256v1`, or provisioning `generate` in this harness); or "
    "import with OpenSC's own `pkcs15-init --store-private-key KEY.pem` (pkcs15-init sees the "
    "full algorithm list) or with gpg `keytocard`, after setting the slot's key attribute to "
    "the key's curve (gpg --card-edit, admin, key-attr); or use OpenSC 0.27.0 or later."
)


def _version(lines: Sequence[str]) -> tuple[int, int, int] | None:
    for line in lines[:2000]:
        found = VERSION.search(line)
        if found:
            return int(found.group(1)), int(found.group(2)), int(found.group(3) or 0)
    return None


def check(calls: Sequence[Call], lines: Sequence[str]) -> Iterator[tuple[int, str, str]]:
    for i, call in enumerate(calls):
        if call.fn != "C_CreateObject" or call.rv in ("CKR_OK",):
            continue
        if call.object_class not in (None, "CKO_PRIVATE_KEY"):
            continue
        text = "\n".join(lines[call.line - 1: call.end_line])
        in_debug_log = REFUSAL.search(text) or (call.detail and REFUSAL.search(call.detail))
        ec_refused = call.key_type == "CKK_EC" and call.rv == "CKR_GENERAL_ERROR"
        if not in_debug_log and not ec_refused:
            continue
        openpgp = OPENPGP.search("\n".join(lines[:5000])) is not None
        version = _version(lines)
        cause = (
            f"OpenSC's OpenPGP driver (card-openpgp.c) up to OpenSC {LAST_AFFECTED} offers the "
            "full algorithm list of an OpenPGP 2.x card whose key attributes can be changed "
            "(Gnuk, Nitrokey Start) only to pkcs15-init; through the PKCS#11 module only the "
            "key type each key slot is currently set to counts, so an EC key for a slot set to "
            "RSA fails in check_key_compatibility (-1406), sc_pkcs15init_store_private_key "
            "says \"Card does not support this key for crypto\" (-1503) and C_CreateObject "
            "returns CKR_GENERAL_ERROR. OpenSC 0.27.0 removed that condition (Debian 12 has "
            "0.23, Debian 13 0.26.1)."
        )
        if version is not None and version >= FIXED_IN:
            summary = (f"This log's OpenSC {'.'.join(map(str, version))} no longer has the "
                       f"OpenPGP import limit of OpenSC <= {LAST_AFFECTED}: here the card or the "
                       "slot's key attribute refused the key itself. " + cause)
        elif openpgp or in_debug_log:
            summary = ("The private-key import was refused by OpenSC before the card saw it"
                       + (" (OpenPGP card)" if openpgp else "") + ": " + cause)
        else:
            summary = ("If this token is an OpenPGP card (Nitrokey Start, Gnuk, YubiKey "
                       f"OpenPGP) through OpenSC <= {LAST_AFFECTED} (this log does not say): "
                       + cause + " An OpenSC debug log (OPENSC_DEBUG=9) shows it as "
                       "check_key_compatibility -1406 / -1503.")
        yield i, summary, WORKAROUNDS + (
            " Reproduce it here: `p11tls run --p11-profile nitrokey-start-opensc -m "
            "\"import and ecdsa\"`.")
