"""The fixed-slot rule: may the harness create keys on this token?

A card is "fixed-slot" when its keys live in slots a new key would replace
(OpenPGP's three keys, PIV's key references, a YubiKey's PIV applet): there
the harness provisions only when the user says the card is disposable. A card
with free key IDs (SmartCard-HSM and its kin) takes new keys beside the old.

OpenSC gives every card it emulates PKCS#15 for the model "PKCS#15 emulated"
(src/pkcs11/framework-pkcs15.c, pkcs15_init_token_info, when the driver has no
model of its own), so the model alone says nothing: the token's manufacturer
and label, which each OpenSC emulator sets, decide. What OpenSC's sources set:

- sc-hsm (src/libopensc/pkcs15-sc-hsm.c): label "SmartCard-HSM" ("GoID" for
  the Bundesdruckerei GoID), manufacturer from the card's EF.TokenInfo, else
  "www.CardContact.de" ("Bundesdruckerei GmbH" for GoID). Pico HSM firmware
  writes "Pol Henarejos" there (measured: Pico HSM 6.6 through OpenSC 0.23).
  Keys have free IDs (src/pkcs15init/pkcs15-sc-hsm.c, sc_hsm_determine_free_id:
  each new key gets an unused key reference).
- openpgp (pkcs15-openpgp.c): label "OpenPGP card", manufacturer "OpenPGP
  project" or the card maker's from its AID (Yubico, Nitrokey, FSIJ, …): three
  fixed key slots, so a Nitrokey Start or a Pico OpenPGP stays refused.
- PIV (pkcs15-piv.c): label "PIV_II" (or the card's name), manufacturer
  "piv_II": fixed key references 9A/9C/9D/9E.

A token that says nothing of itself (no model, no manufacturer) is refused:
the harness cannot tell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The one switch, the same for the matrix (option, ini, environment),
# `p11tls sweep` and `p11tls token-sweep` (option, environment).
OVERRIDE_OPTION = "--p11-allow-slot-overwrite"
OVERRIDE_ENV = "P11TLS_ALLOW_SLOT_OVERWRITE"

# Words in a token's model, manufacturer or label that name a fixed-slot card.
FIXED_SLOT_MARKERS = (
    ("openpgp", "an OpenPGP card"),
    ("piv_ii", "a PIV card (OpenSC)"),
    ("piv", "a PIV card"),
    ("yubikey", "a YubiKey"),
)

# Free-ID cards, by the manufacturer or label OpenSC's sc-hsm emulator reports.
FREE_ID_MANUFACTURERS = {
    "www.cardcontact.de": "a SmartCard-HSM (CardContact; Nitrokey HSM)",
    "bundesdruckerei gmbh": "a GoID (SmartCard-HSM)",
    "pol henarejos": "a Pico HSM (SmartCard-HSM firmware)",
}
FREE_ID_LABELS = {
    "smartcard-hsm": "a SmartCard-HSM",
    "goid": "a GoID (SmartCard-HSM)",
}

# OpenSC's model for a card it emulates PKCS#15 for: by itself not an identity.
EMULATED_MODEL = "pkcs#15 emulated"


def _text(info: Mapping[str, Any], key: str) -> str:
    return str(info.get(key) or "").strip()


def free_id_card(info: Mapping[str, Any]) -> str | None:
    """What free-ID card the token says it is (SmartCard-HSM kin), else None."""
    maker = _text(info, "manufacturer").lower()
    label = _text(info, "token_label").lower()
    if maker in FREE_ID_MANUFACTURERS:
        return FREE_ID_MANUFACTURERS[maker]
    # OpenSC's PKCS#11 label is the card's, with " (UserPIN)" after it
    base = label.split(" (", 1)[0].strip()
    return FREE_ID_LABELS.get(base)


def fixed_slot_card(info: Mapping[str, Any]) -> str | None:
    """What fixed-slot card the token says it is (OpenPGP, PIV, YubiKey), else None."""
    text = " ".join(_text(info, k) for k in ("model", "manufacturer", "token_label")).lower()
    return next((what for marker, what in FIXED_SLOT_MARKERS if marker in text), None)


def override_in(env: Mapping[str, str]) -> bool:
    """The override set in the environment (for commands without Settings)."""
    return env.get(OVERRIDE_ENV, "").strip().lower() in ("1", "yes", "true", "on")


def override_hint() -> str:
    return (f"use a disposable card with {OVERRIDE_OPTION} (or {OVERRIDE_ENV}=yes; its keys "
            "may be replaced), or, in the matrix, test the keys already on it read-only with "
            "--p11-existing or --p11-key URI")


def fixed_slot_reason(info: Mapping[str, Any]) -> str | None:
    """Why the harness must not provision on this token (its keys sit in fixed
    slots, or the token does not say what it is), else None. `info`: the token
    as the clients see it (TokenInfo.as_dict(): token_label, model, manufacturer)."""
    label = _text(info, "token_label")
    model = _text(info, "model")
    maker = _text(info, "manufacturer")
    if not model and not maker:
        return (f"token {label!r} does not say what it is (no model, no manufacturer), so the "
                "harness cannot tell whether new keys would replace existing ones: "
                + override_hint())
    fixed = fixed_slot_card(info)  # first: an OpenPGP card by a free-ID maker stays fixed
    if fixed is not None:
        return (f"token {label!r} ({model} by {maker}) looks like {fixed}, whose keys sit in "
                "fixed slots: new keys could replace the ones on it, so the harness does "
                f"not provision there; {override_hint()}")
    if model.lower() == EMULATED_MODEL and free_id_card(info) is None:
        return (f"token {label!r} ({model} by {maker}) is a card OpenSC emulates PKCS#15 for, "
                "and not one the harness knows to have free key IDs (SmartCard-HSM, Pico "
                "HSM, Nitrokey HSM): new keys could replace the ones on it, so the harness "
                f"does not provision there; {override_hint()}")
    return None


def slot_verdict(info: Mapping[str, Any]) -> str:
    """One line for `p11tls doctor`: would the matrix provision here, and why."""
    reason = fixed_slot_reason(info)
    if reason is not None:
        return f"the matrix would refuse to create keys here: {reason}"
    free = free_id_card(info)
    if free is not None:
        return (f"the matrix would create its keys here: the token says it is {free}, "
                "whose keys have free IDs")
    return "the matrix would create its keys here: the token names no fixed-slot card"
