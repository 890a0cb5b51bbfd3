"""Putting keys and their client certificates on the token.

Each key is either generated on the token (C_GenerateKeyPair: private key
sensitive and not extractable) or imported (made on the host with
cryptography and stored with C_CreateObject, with the template shape of
seed 000). The private key, public key and certificate share one CKA_ID and
CKA_LABEL that are unique to this run, so the harness can find, use and
later remove exactly the objects it created and nothing else. An imported
key is also kept in memory (never on disk) for the `software` control client.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pkcs11 import DEFAULT, Attribute, CertificateType, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11exc
from pkcs11.util.ec import encode_ec_public_key

from harness.errors import TokenError
from harness.matrix.keys import Algorithm, KeySpec, Provisioning
from harness.pkcs11 import exception_return_code
from harness.tls.ca import PublicKey, TestCA, write_pem
from harness.tls.lab_ca import LabCA
from harness.token.journal import CleanupError, Journal, LeftObject, describe_object
from harness.token.session import Token, TokenTimeout

RSA_EXPONENT = 65537


@dataclass(frozen=True)
class ProvisionedKey:
    """A key pair and certificate the harness put on the token."""

    spec: KeySpec
    provisioning: Provisioning
    label: str
    id_hex: str
    cert_pem: Path
    # Imported keys only: the host's copy (a cryptography private key) for the
    # software control. Kept out of repr and comparisons so it is never printed.
    private_key: Any = field(default=None, repr=False, compare=False)
    # A key already on the token (read-only mode): its certificate's subject, which
    # the server must see (the label need not be in it); None: the label is the CN.
    subject: str | None = None


class ProvisioningRefused(TokenError):
    """The token refused to create the key (e.g. import not supported)."""

    def __init__(self, message: str, ckr: str, host_key: ProvisionedKey | None = None) -> None:
        super().__init__(message)
        self.ckr = ckr
        # A refused import still has its key and a certificate on the host:
        # the software control can run where the token clients cannot.
        self.host_key = host_key


def ckr_name(exc: BaseException) -> str:
    """CKR_ name for a python-pkcs11 exception (harness.pkcs11's vocabulary)."""
    return exception_return_code(exc) or f"CKR_? ({type(exc).__name__})"


def _ec_point(public_key: Any) -> bytes:
    raw = public_key.public_bytes(serialization.Encoding.X962,
                                  serialization.PublicFormat.UncompressedPoint)
    return b"\x04" + bytes([len(raw)]) + raw if len(raw) < 128 else (
        b"\x04\x81" + bytes([len(raw)]) + raw)


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


class Provisioner:
    """Creates keys and certificates on one token and removes them again."""

    def __init__(self, token: Token, ca: TestCA | LabCA, workdir: Path, run_tag: str,
                 journal: Journal | None = None) -> None:
        self.token = token
        self.ca = ca
        self.workdir = workdir
        self.run_tag = run_tag
        self.journal = journal  # a named token: what we create, written down first
        self.created: list[tuple[bytes, str]] = []  # (CKA_ID, label) of what this run made

    def provision(self, spec: KeySpec, provisioning: Provisioning,
                  private_key: Any = None, *, label: str | None = None,
                  key_id: bytes | None = None) -> ProvisionedKey:
        """Put a key of `spec` and its certificate on the token.

        `private_key` (a cryptography key, import only) stores that key instead
        of a fresh one, e.g. to compare with a client using the same key from PEM.
        `label`/`key_id`: a fixed name (lab keys, `p11tls provision`) instead of
        this run's.
        """
        label = label or f"p11tls-{self.run_tag}-{spec.name}-{provisioning.value}"
        key_id = key_id or secrets.token_bytes(8)
        session = self.token.session
        if self.journal is not None:
            self.journal.intend(label, key_id.hex())
        self.created.append((key_id, label))
        host_key = None
        try:
            if provisioning is Provisioning.GENERATE:
                public_key = self.token.call(
                    lambda: self._generate(session, spec, label, key_id), "C_GenerateKeyPair")
            else:
                host_key = private_key if private_key is not None else new_private_key(spec)
                public_key = self.token.call(
                    lambda: self._import(session, spec, label, key_id, host_key),
                    "C_CreateObject")
        except p11exc.PKCS11Error as exc:
            ckr = ckr_name(exc)
            raise ProvisioningRefused(
                f"token refused to {provisioning.value} a {spec.name} key: {ckr}", ckr,
                self._host_only(spec, provisioning, label, key_id, host_key),
            ) from None
        cert = self.ca.issue_client_cert(public_key, label)
        self.token.call(lambda: session.create_object({
            Attribute.CLASS: ObjectClass.CERTIFICATE,
            Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.ID: key_id,
            Attribute.LABEL: label,
            Attribute.SUBJECT: cert.subject.public_bytes(),
            Attribute.ISSUER: cert.issuer.public_bytes(),
            Attribute.SERIAL_NUMBER: _der_integer(cert.serial_number),
            Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
        }), "C_CreateObject")
        cert_pem = write_pem(cert, self.workdir / f"{label}.pem")
        return ProvisionedKey(spec, provisioning, label, key_id.hex(), cert_pem, host_key)

    def _host_only(self, spec: KeySpec, provisioning: Provisioning, label: str,
                   key_id: bytes, host_key: Any) -> ProvisionedKey | None:
        """The key and a certificate the token refused to store, for the software
        control; None for a generated key (there is no host copy)."""
        if host_key is None:
            return None
        cert = self.ca.issue_client_cert(host_key.public_key(), label)
        cert_pem = write_pem(cert, self.workdir / f"{label}.pem")
        return ProvisionedKey(spec, provisioning, label, key_id.hex(), cert_pem, host_key)

    # -- generate on the token -------------------------------------------------
    def _generate(self, session: Any, spec: KeySpec, label: str, key_id: bytes) -> PublicKey:
        common = {Attribute.TOKEN: True, Attribute.ID: key_id, Attribute.LABEL: label}
        private = {**common, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                   Attribute.EXTRACTABLE: False, Attribute.SIGN: True}
        public = {**common, Attribute.VERIFY: True}
        if spec.algorithm is Algorithm.RSA:
            pub, _ = session.generate_keypair(
                KeyType.RSA, spec.bits, store=True, id=key_id, label=label,
                public_template={**public, Attribute.PUBLIC_EXPONENT: _int_bytes(RSA_EXPONENT)},
                private_template=private,
            )
            return rsa.RSAPublicNumbers(
                int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big"),
                int.from_bytes(pub[Attribute.MODULUS], "big"),
            ).public_key()
        key_type, mechanism = (
            (KeyType.EC, Mechanism.EC_KEY_PAIR_GEN) if spec.algorithm is Algorithm.ECDSA
            else (KeyType.EC_EDWARDS, Mechanism.EC_EDWARDS_KEY_PAIR_GEN)
        )
        params = session.create_domain_parameters(
            key_type, {Attribute.EC_PARAMS: bytes.fromhex(spec.ec_params_hex or "")}, local=True
        )
        # python-pkcs11 would add CKA_ENCRYPT/CKA_DECRYPT false for EC keys; tpm2-pkcs11
        # refuses a value that differs from its TPM key's (CKR_GENERAL_ERROR): the token decides.
        unset = {Attribute.ENCRYPT: DEFAULT, Attribute.WRAP: DEFAULT}
        pub, _ = params.generate_keypair(
            store=True, id=key_id, label=label, mechanism=mechanism,
            public_template={**public, **unset},
            private_template={**private, Attribute.DECRYPT: DEFAULT, Attribute.UNWRAP: DEFAULT},
        )
        if spec.algorithm is Algorithm.EDDSA:
            point = pub[Attribute.EC_POINT]
            raw = point[2:] if len(point) == 34 and point[0] == 0x04 else point
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        try:
            loaded = serialization.load_der_public_key(encode_ec_public_key(pub))
        except ValueError:  # e.g. tpm2-pkcs11 1.9.0: P-521 point with a short-form DER length
            raise ProvisioningRefused(
                f"the token's CKA_EC_POINT of the new {spec.name} key is not a DER OCTET STRING",
                "malformed CKA_EC_POINT") from None
        assert isinstance(loaded, ec.EllipticCurvePublicKey)
        return loaded

    # -- import (C_CreateObject) -----------------------------------------------
    def _import(self, session: Any, spec: KeySpec, label: str, key_id: bytes,
                given: Any) -> PublicKey:
        # The template follows seed 000 (Pkcs11Interop importing to a Nitrokey):
        # class, key type, label, id, token, sensitive, params, value.
        common = {Attribute.TOKEN: True, Attribute.ID: key_id, Attribute.LABEL: label}
        private: dict[Any, Any] = {**common, Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                   Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                                   Attribute.SIGN: True}
        public: dict[Any, Any] = {**common, Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                                  Attribute.VERIFY: True}
        if spec.algorithm is Algorithm.RSA:
            key = given
            n = key.private_numbers()
            pn = n.public_numbers
            public.update({Attribute.KEY_TYPE: KeyType.RSA, Attribute.MODULUS: _int_bytes(pn.n),
                           Attribute.PUBLIC_EXPONENT: _int_bytes(pn.e)})
            private.update({
                Attribute.KEY_TYPE: KeyType.RSA, Attribute.MODULUS: _int_bytes(pn.n),
                Attribute.PUBLIC_EXPONENT: _int_bytes(pn.e),
                Attribute.PRIVATE_EXPONENT: _int_bytes(n.d),
                Attribute.PRIME_1: _int_bytes(n.p), Attribute.PRIME_2: _int_bytes(n.q),
                Attribute.EXPONENT_1: _int_bytes(n.dmp1), Attribute.EXPONENT_2: _int_bytes(n.dmq1),
                Attribute.COEFFICIENT: _int_bytes(n.iqmp),
            })
            public_key: PublicKey = key.public_key()
        elif spec.algorithm is Algorithm.ECDSA:
            eckey = given
            params = bytes.fromhex(spec.ec_params_hex or "")
            scalar = eckey.private_numbers().private_value.to_bytes((spec.bits + 7) // 8, "big")
            private.update({Attribute.KEY_TYPE: KeyType.EC, Attribute.EC_PARAMS: params,
                            Attribute.VALUE: scalar})
            public.update({Attribute.KEY_TYPE: KeyType.EC, Attribute.EC_PARAMS: params,
                           Attribute.EC_POINT: _ec_point(eckey.public_key())})
            public_key = eckey.public_key()
        else:
            edkey = given
            params = bytes.fromhex(spec.ec_params_hex or "")
            raw_private = edkey.private_bytes(serialization.Encoding.Raw,
                                              serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption())
            raw_public = edkey.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)
            private.update({Attribute.KEY_TYPE: KeyType.EC_EDWARDS, Attribute.EC_PARAMS: params,
                            Attribute.VALUE: raw_private})
            public.update({Attribute.KEY_TYPE: KeyType.EC_EDWARDS, Attribute.EC_PARAMS: params,
                           Attribute.EC_POINT: b"\x04\x20" + raw_public})
            public_key = edkey.public_key()
        session.create_object(private)
        session.create_object(public)
        return public_key

    def remove_created(self) -> int:
        """Destroy every object this run created (found by its CKA_ID and label);
        count them. Raises CleanupError naming every object left behind."""
        removed = 0
        left: list[LeftObject] = []
        why = ""
        prefix = f"p11tls-{self.run_tag}-"
        for key_id, label in list(self.created):
            try:
                session = self.token.session
                found = self.token.call(
                    lambda k=key_id, s=session: list(  # type: ignore[misc]
                        s.get_objects({Attribute.ID: k})),
                    "C_FindObjects")
            except (TokenError, p11exc.PKCS11Error) as exc:
                why = why or _why(exc)
                left.append(LeftObject(label, key_id.hex(), "key pair and certificate, if made"))
                continue
            for obj in found:
                try:
                    item = self.token.call(lambda o=obj: describe_object(o),  # type: ignore[misc]
                                           "C_GetAttributeValue")
                except (TokenError, p11exc.PKCS11Error) as exc:
                    why = why or _why(exc)
                    left.append(LeftObject(label, key_id.hex(), "CKO_?"))
                    continue
                if not item.label.startswith(prefix):  # ours by construction, nothing else
                    continue
                try:
                    self.token.call(obj.destroy, "C_DestroyObject")
                    removed += 1
                except (TokenError, p11exc.PKCS11Error) as exc:
                    why = why or _why(exc)
                    left.append(item)
        self.created.clear()
        if self.journal is not None:
            self.journal.close(clean=not left)
        if left:
            raise CleanupError(f"token {self.token.label!r}", left, why)
        return removed


def _why(exc: BaseException) -> str:
    if isinstance(exc, TokenTimeout):
        return str(exc)
    return ckr_name(exc) if isinstance(exc, p11exc.PKCS11Error) else str(exc)


def new_private_key(spec: KeySpec) -> Any:
    """A fresh host key of `spec` (cryptography) for import."""
    if spec.algorithm is Algorithm.RSA:
        return rsa.generate_private_key(RSA_EXPONENT, spec.bits)
    if spec.algorithm is Algorithm.ECDSA:
        return ec.generate_private_key(getattr(ec, (spec.curve or "").upper())())
    return ed25519.Ed25519PrivateKey.generate()


def _der_integer(n: int) -> bytes:
    body = n.to_bytes((n.bit_length() + 8) // 8, "big")
    return b"\x02" + bytes([len(body)]) + body
