"""The TLS client-auth matrix: key × provisioning × client × TLS version.

Parametrized by the p11tls plugin (`p11_case`); select with markers, e.g.
`pytest -m tls12`, `pytest -m "ecdsa and gnutls"`. Known incompatibilities
of the default stack are strict expected failures with their reason
(harness/data/known_failures.toml).
"""

import pytest


def test_handshake(p11_runner, p11_case, p11_record):
    record = p11_runner.run(p11_case)
    p11_record(record)
    if record.outcome == "skip":
        pytest.skip(record.error)
    assert record.outcome == "ok", (
        f"{record.case_id}: {record.error} (logs: {record.logs.get('client')})"
    )
    assert record.signature_scheme, "the server saw no CertificateVerify"
    # what the token was asked for (harness/data/expected_mechanisms.toml)
    assert not record.sign_problems, "; ".join(record.sign_problems)
