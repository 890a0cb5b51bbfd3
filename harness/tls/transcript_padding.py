"""Making the TLS 1.2 handshake transcript larger on purpose.

The server sends the distinguished name of every CA in its -CAfile in the
CertificateRequest, and a TLS 1.2 client signs the whole transcript; so a
file of extra self-signed CAs with long names grows the input of the
CertificateVerify signature by that many bytes. The extra CAs are made per
run (a few ms each) and sign nothing. The last one's name is cut to length,
so a step adds the asked number of bytes to within about 20.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Per padding CA: a CN plus up to 4 OU values of 64 characters (~330 bytes of name).
_UNITS = 4
_UNIT = 64


def _name(index: int, budget: int) -> x509.Name:
    """A name whose DER plus its 2-byte length in the CertificateRequest is
    about `budget` bytes (at least the size of the bare CN)."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, f"pad{index:05d}")]

    def size() -> int:
        return len(x509.Name(attrs).public_bytes()) + 2

    for _ in range(_UNITS):
        if size() >= budget:
            break
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x" * _UNIT))
        # cut values to fit, the last first (DER lengths shrink too); a new
        # value costs ~12 bytes even at one character, so the one before
        # it gives way then: every budget is met to the byte
        for at in range(len(attrs) - 1, 0, -1):
            length = len(str(attrs[at].value))
            while size() > budget and length > 1:
                length = max(1, length - (size() - budget))
                attrs[at] = x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x" * length)
    return x509.Name(attrs)


def padding_ca(name: x509.Name, serial: int, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(serial)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )


def names_size(cert: x509.Certificate) -> int:
    """Bytes the CA adds to a CertificateRequest: its DER name plus a 2-byte length."""
    return len(cert.subject.public_bytes()) + 2


def padding_file(directory: Path, extra_bytes: int) -> Path:
    """A PEM file of padding CAs whose names add about `extra_bytes` (an empty
    file for 0: the server then sends no CA names at all)."""
    path = directory / f"ca-names-{extra_bytes}.pem"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())  # one key is enough: only names matter
    pems, added, index = [], 0, 0
    while added < extra_bytes:
        cert = padding_ca(_name(index, extra_bytes - added), index + 1, key)
        pems.append(cert.public_bytes(serialization.Encoding.PEM))
        added += names_size(cert)
        index += 1
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(pems))
    tmp.replace(path)
    return path
