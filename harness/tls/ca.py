"""Per-run certificates: a trustme CA, the server certificate, and client
certificates issued for public keys that live on the token.

trustme cannot issue for a key it did not make, so client certificates are
built with cryptography and the CA's private key.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Union

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey]


class TestCA:
    """A CA with its files in `directory`: ca.pem, server.pem, server.key."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "p11tls test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)  # it holds the server's private key
        self.ca = trustme.CA(organization_name=name)
        self.ca_pem = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert_pem = directory / "server.pem"
        self.server_key_pem = directory / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert_pem))
        fd = os.open(self.server_key_pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as key_file:
            key_file.write(server.private_key_pem.bytes())

    def issue_client_cert(self, public_key: PublicKey, common_name: str) -> x509.Certificate:
        """A clientAuth certificate for a public key held elsewhere (on a token)."""
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        return builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]


def write_pem(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
