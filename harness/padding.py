"""Making the TLS 1.2 handshake transcript larger on purpose.

The server sends the distinguished names of every CA in its -CAfile in the
CertificateRequest, and a TLS 1.2 client signs the whole transcript; so a CA
file with extra self-signed CAs whose names are long grows the input of the
CertificateVerify signature by about that many bytes. The extra CAs are made
per run (a few ms each) and sign nothing.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# 4 OU values of 64 characters: a DN of about 330 bytes, so steps are fine-grained
_UNITS = 4


def padding_ca(index: int, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, f"p11tls transcript padding CA {index:05d}")]
    attrs += [
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{unit:02d}-" + "x" * 61)
        for unit in range(_UNITS)
    ]
    name = x509.Name(attrs)
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(index + 1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )


def names_size(cert: x509.Certificate) -> int:
    """Bytes the CA adds to a CertificateRequest: its DER name plus a 2-byte length."""
    return len(cert.subject.public_bytes()) + 2


def padded_ca_file(directory: Path, ca_pem: Path, extra_bytes: int) -> Path:
    """ca_pem followed by enough padding CAs to add about `extra_bytes` of names."""
    if extra_bytes <= 0:
        return ca_pem
    path = directory / f"ca-names-{extra_bytes}.pem"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())  # one key is enough: only names matter
    pems, added, index = [ca_pem.read_bytes()], 0, 0
    while added < extra_bytes:
        cert = padding_ca(index, key)
        pems.append(cert.public_bytes(serialization.Encoding.PEM))
        added += names_size(cert)
        index += 1
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(pems))
    tmp.replace(path)
    return path
