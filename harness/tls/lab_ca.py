"""The lab's persistent CA for keys provisioned once (`p11tls provision`).

Its certificate lives in the repository (`certs/lab-ca.pem`); its private key
never does: `~/.config/p11tls/lab-ca.key` (mode 0600; `P11TLS_LAB_CA_KEY` or
`--lab-ca-key` move it). Both are made on first use; a certificate without its
key is refused rather than replaced, so a lab keeps one CA.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness.errors import ConfigError
from harness.tls.ca import PublicKey

CA_NAME = "p11tls lab CA"
CA_DAYS = 3650
CLIENT_DAYS = 825


def default_key_path() -> Path:
    if os.environ.get("P11TLS_LAB_CA_KEY"):
        return Path(os.environ["P11TLS_LAB_CA_KEY"]).expanduser()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "p11tls" / "lab-ca.key"


class LabCA:
    """Load the lab CA, or make it on first use."""

    def __init__(self, cert_path: Path, key_path: Path | None = None) -> None:
        self.cert_path = cert_path
        self.key_path = key_path or default_key_path()
        self.made = False
        if self.key_path.exists():
            self._key = self._load_key()
        elif cert_path.exists():
            raise ConfigError(
                f"the lab CA certificate {cert_path} exists but its key {self.key_path} does "
                "not: copy the lab's key there (P11TLS_LAB_CA_KEY or --lab-ca-key name another "
                "place), or move the certificate away to make a new lab CA")
        else:
            self._key = self._new_key()
            self.made = True
        if cert_path.exists():
            self.cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if self.cert.public_key() != self._key.public_key():
                raise ConfigError(f"the lab CA key {self.key_path} does not belong to the "
                                  f"certificate {cert_path}")
        else:
            self.cert = self._self_signed()
            cert_path.parent.mkdir(parents=True, exist_ok=True)
            cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
            self.made = True

    def _load_key(self) -> ec.EllipticCurvePrivateKey:
        if self.key_path.stat().st_mode & 0o077:
            raise ConfigError(f"the lab CA key {self.key_path} is readable by others: "
                              f"chmod 600 {self.key_path}")
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{self.key_path} is not an EC private key (the lab CA's key)")
        return key

    def _new_key(self) -> ec.EllipticCurvePrivateKey:
        key = ec.generate_private_key(ec.SECP256R1())
        self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        return key

    def _self_signed(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_NAME),
                          x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        now = datetime.datetime.now(datetime.timezone.utc)
        public = self._key.public_key()
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .sign(self._key, hashes.SHA256()))

    def issue_client_cert(self, public_key: PublicKey, common_name: str) -> x509.Certificate:
        """A long-lived clientAuth certificate for a key on a lab token."""
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(self.cert.subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=CLIENT_DAYS))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._key.public_key()), critical=False)
                .sign(self._key, hashes.SHA256()))
