"""Read-only mode: the keys already on a token, found and used without writing.

`--p11-existing` takes every key pair that has a certificate with the same
CKA_ID; `--p11-key pkcs11:…` (RFC 7512, repeatable) names keys one by one,
also keys without a certificate. Discovery reads public objects only
(certificates, public keys), so collecting the matrix needs no login; the
runner confirms each private key after its one read-only login.

Each key becomes a KeySpec named after its label (the case axis: provisioning
"existing"); its facts (known failures) are those of the key type it has
(`canonical_spec`). Keys the lab provisioned once (`p11tls provision`) carry
labels `p11tls-lab-<key type>` and are found like any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from harness.errors import ConfigError, TokenError
from harness.matrix.keys import KEYS, Algorithm, KeySpec

# Functions that change a token or its objects: a read-only run makes none of them
# (the recorded calls of every case and of the harness itself prove it).
WRITE_FUNCTIONS = frozenset({
    "C_CreateObject", "C_CopyObject", "C_DestroyObject", "C_SetAttributeValue",
    "C_GenerateKey", "C_GenerateKeyPair", "C_UnwrapKey", "C_DeriveKey",
    "C_InitToken", "C_InitPIN", "C_SetPIN",
})
# Clients that read the client certificate from a file: a key with no certificate
# on the token gets one made in memory for them. The others (SunPKCS11, NSS) pair
# a key with the token's certificate and are skipped for such a key.
CERT_FROM_FILE = frozenset({"openssl-engine", "openssl-provider", "gnutls", "curl"})
NO_CERT_ON_TOKEN = ("key {label!r} has no certificate on the token and {client} takes the "
                    "client certificate from the token only; a read-only run writes none")
LAB_PREFIX = "p11tls-lab-"  # labels of keys `p11tls provision` put on a lab token
_URI_ATTRIBUTES = {"token", "object", "id", "type", "manufacturer", "model", "serial",
                   "library-manufacturer", "library-description", "library-version",
                   "slot-description", "slot-manufacturer", "slot-id"}
_TOKEN_ATTRIBUTES = ("token", "serial", "manufacturer", "model")


@dataclass(frozen=True)
class KeyURI:
    """The parts of an RFC 7512 URI that select a key on the token."""

    text: str
    token: str | None = None
    label: str | None = None  # object=
    key_id: bytes | None = None  # id=
    kind: str | None = None  # type=
    # token=, serial=, manufacturer=, model=: the token they must match (CK_TOKEN_INFO)
    token_info: tuple[tuple[str, str], ...] = ()


def parse_key_uri(text: str) -> KeyURI:
    """An RFC 7512 `pkcs11:` URI naming a key (by object= and/or id=);
    ConfigError with the reason otherwise. A pin-value is refused: PINs
    never go on a command line."""
    if not text.startswith("pkcs11:"):
        raise ConfigError(f"--p11-key {text!r} is not a pkcs11: URI (RFC 7512), e.g. "
                          "pkcs11:object=my-key;type=private")
    path = text[len("pkcs11:"):].split("?", 1)
    if len(path) > 1 and re.search(r"(^|&)pin-(value|source)=", path[1]):
        raise ConfigError("--p11-key must not carry a PIN (pin-value/pin-source): give the "
                          "PIN with PKCS11_TOKEN_PIN or a lab file")
    values: dict[str, bytes] = {}
    for part in filter(None, path[0].split(";")):
        name, sep, value = part.partition("=")
        if not sep or name not in _URI_ATTRIBUTES:
            raise ConfigError(f"--p11-key {text!r}: unknown or malformed attribute {part!r}")
        if name in values:  # RFC 7512: each attribute at most once
            raise ConfigError(f"--p11-key {text!r}: {name}= is given twice; give it once")
        values[name] = unquote_to_bytes(value)

    def text_of(name: str) -> str | None:
        if name not in values:
            return None
        try:
            return values[name].decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"--p11-key {text!r}: {name}= is not UTF-8 text once "
                              "percent-decoded (RFC 7512 values are UTF-8)") from None

    kind = text_of("type")
    if kind not in (None, "private", "public", "cert"):
        raise ConfigError(f"--p11-key {text!r}: type={kind} names no key; use type=private")
    if "object" not in values and "id" not in values:
        raise ConfigError(f"--p11-key {text!r} names no key: give object= or id=")
    said = {name: text_of(name) for name in _TOKEN_ATTRIBUTES}
    token_info = tuple((name, value) for name, value in said.items() if value is not None)
    return KeyURI(text, token=text_of("token"), label=text_of("object"),
                  key_id=values.get("id"), kind=kind, token_info=token_info)


def check_token(uri: KeyURI, token: Any) -> None:
    """A URI's token=/serial=/manufacturer=/model= must be the token's (a
    python-pkcs11 Token); ConfigError naming the first that is not."""
    said = {"token": token.label, "serial": getattr(token, "serial", b""),
            "manufacturer": token.manufacturer_id, "model": token.model}
    for name, wanted in uri.token_info:
        value = said[name]
        have = (value.decode(errors="replace") if isinstance(value, bytes)
                else str(value)).strip()
        if have != wanted:
            raise ConfigError(f"--p11-key {uri.text}: {name}={wanted!r} is not this token "
                              f"(its {name} is {have!r}): check --p11-token-label or the URI")


@dataclass(frozen=True)
class ExistingKey:
    """A key already on the token, as discovery found it."""

    name: str  # the case axis: the label, made safe for test ids
    label: str  # CKA_LABEL of the key (of its certificate when the key shows none)
    id_hex: str
    algorithm: Algorithm
    bits: int
    curve: str | None = None
    ec_params_hex: str | None = None
    cert_label: str | None = None  # CKA_LABEL of its certificate (SunPKCS11's alias)
    cert_der: bytes | None = field(default=None, repr=False)
    public_key: Any = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> KeySpec:
        return KeySpec(self.name, self.algorithm, self.bits, self.curve, self.ec_params_hex)

    @property
    def key_type(self) -> str:
        """rsa2048, p256, ed25519 … (the matrix's key type names where one fits)."""
        canonical = canonical_spec(self.spec)
        return canonical.name if canonical else f"{self.algorithm.value}{self.bits}"

    @property
    def certificate(self) -> x509.Certificate | None:
        return x509.load_der_x509_certificate(self.cert_der) if self.cert_der else None

    def describe(self) -> dict[str, Any]:
        """What the report says about the key (no key material)."""
        cert = self.certificate
        return {"name": self.name, "label": self.label, "id": self.id_hex,
                "type": self.key_type, "certificate": self.cert_label if cert else None,
                "issuer": cert.issuer.rfc4514_string() if cert else None}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "id": self.id_hex,
                "algorithm": self.algorithm.value, "bits": self.bits, "curve": self.curve,
                "ec_params_hex": self.ec_params_hex, "cert_label": self.cert_label}


def canonical_spec(spec: KeySpec) -> KeySpec | None:
    """The matrix key type of the same algorithm and size (its facts apply), if any."""
    for known in KEYS.values():
        if known.algorithm is spec.algorithm and known.bits == spec.bits:
            return known
    return None


def safe_name(label: str, id_hex: str) -> str:
    """A test-id-safe name for a key: its label, else its CKA_ID."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")
    return name or f"id{id_hex}"


# -- reading the token (python-pkcs11 objects) ------------------------------------
def _shape(public_key: Any) -> tuple[Algorithm, int, str | None, str | None]:
    """(algorithm, bits, curve, CKA_EC_PARAMS hex) of a cryptography public key."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return Algorithm.RSA, public_key.key_size, None, None
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = public_key.curve.name
        params = next((k.ec_params_hex for k in KEYS.values() if k.curve == curve), None)
        return Algorithm.ECDSA, public_key.curve.key_size, curve, params
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return Algorithm.EDDSA, 255, None, KEYS["ed25519"].ec_params_hex
    raise TokenError(f"unsupported key type {type(public_key).__name__}")


def _public_from_object(obj: Any) -> Any:
    """A cryptography public key from a CKO_PUBLIC_KEY object."""
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_ec_public_key

    key_type = obj[Attribute.KEY_TYPE]
    if key_type == KeyType.RSA:
        return rsa.RSAPublicNumbers(int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big"),
                                    int.from_bytes(obj[Attribute.MODULUS], "big")).public_key()
    if key_type == KeyType.EC:
        return serialization.load_der_public_key(encode_ec_public_key(obj))
    if key_type == KeyType.EC_EDWARDS:
        point = bytes(obj[Attribute.EC_POINT])
        raw = point[2:] if len(point) == 34 and point[0] == 0x04 else point
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    raise TokenError(f"unsupported key type {key_type}")


def _attr(obj: Any, attribute: Any, default: Any = None) -> Any:
    try:
        return obj[attribute]
    except Exception:  # noqa: BLE001 - an attribute the token does not give
        return default


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def discover(session: Any, *, all_pairs: bool, uris: tuple[KeyURI, ...] = ()) -> list[ExistingKey]:
    """The keys to test on the token of `session` (logged in or not: only public
    objects are needed). `all_pairs`: every certificate with a CKA_ID (the key
    pair behind it); `uris`: the keys they name, with or without a certificate."""
    from pkcs11 import Attribute, CertificateType, ObjectClass

    certs: dict[bytes, tuple[str, bytes]] = {}
    for obj in session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE,
                                    Attribute.CERTIFICATE_TYPE: CertificateType.X_509}):
        key_id = bytes(_attr(obj, Attribute.ID, b"") or b"")
        if key_id and key_id not in certs:
            certs[key_id] = (_text(_attr(obj, Attribute.LABEL, "")), bytes(obj[Attribute.VALUE]))
    publics: dict[bytes, Any] = {}
    for obj in session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY}):
        key_id = bytes(_attr(obj, Attribute.ID, b"") or b"")
        if key_id and key_id not in publics:
            publics[key_id] = obj
    chosen: list[bytes] = []
    if all_pairs:
        chosen.extend(certs)
    for uri in uris:
        check_token(uri, session.token)
        matches = [i for i in dict.fromkeys([*certs, *publics])
                   if (uri.key_id is None or i == uri.key_id)
                   and (uri.label is None or uri.label in (
                       certs.get(i, ("", b""))[0],
                       _text(_attr(publics[i], Attribute.LABEL, "")) if i in publics else ""))]
        if not matches:
            raise ConfigError(f"--p11-key {uri.text}: no certificate or public key on the token "
                              "matches (a key needs its public key or certificate to be tested)")
        chosen.extend(m for m in matches if m not in chosen)
    keys: list[ExistingKey] = []
    names: set[str] = set()
    for key_id in dict.fromkeys(chosen):
        keys.append(_existing(key_id, certs.get(key_id), publics.get(key_id), names))
    return keys


def _existing(key_id: bytes, cert: tuple[str, bytes] | None, public: Any,
              names: set[str]) -> ExistingKey:
    from pkcs11 import Attribute

    cert_label, cert_der = cert if cert else (None, None)
    if cert_der is not None:
        public_key = x509.load_der_x509_certificate(cert_der).public_key()
    else:
        public_key = _public_from_object(public)
    label = _text(_attr(public, Attribute.LABEL, "")) if public is not None else ""
    label = label or cert_label or ""
    algorithm, bits, curve, params = _shape(public_key)
    name = safe_name(label, key_id.hex())
    if name in names:
        name = f"{name}-{key_id.hex()}"
    names.add(name)
    return ExistingKey(name, label, key_id.hex(), algorithm, bits, curve, params,
                       cert_label, cert_der, public_key)


def has_private_key(session: Any, key_id_hex: str) -> bool:
    """The private key with this CKA_ID is visible (after the login)."""
    from pkcs11 import Attribute, ObjectClass

    return any(True for _ in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                                  Attribute.ID: bytes.fromhex(key_id_hex)}))


def writes_in(calls: list[dict[str, Any]] | None) -> list[str]:
    """The functions among recorded calls that write to the token (none in a
    read-only run). A session object is not the token's: pkcs11-provider copies
    a key into one (C_CopyObject with CKA_TOKEN false) and destroys it again
    (measured on Debian 13, pkcs11-provider 1.0), which leaves the token as it was."""
    session_objects: set[object] = set()
    found: set[str] = set()
    for call in calls or ():
        fn = call.get("fn")
        if fn not in WRITE_FUNCTIONS:
            continue
        if fn in ("C_CopyObject", "C_CreateObject") and _session_only(call):
            session_objects.add(call.get("new_object"))
            continue
        if fn == "C_DestroyObject" and call.get("object") in session_objects:
            continue
        found.add(str(fn))
    return sorted(found)


def _session_only(call: dict[str, Any]) -> bool:
    """The call's template says CKA_TOKEN false (the recorded harmless value)."""
    return any(isinstance(a, dict) and a.get("type") == "CKA_TOKEN" and a.get("value") is False
               for a in call.get("template") or ())
