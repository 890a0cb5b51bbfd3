"""The TLS client-auth matrix: key × provisioning × client × TLS version.

Parametrized by the p11tls plugin (`p11_case`); select with markers, e.g.
`pytest -m tls12`, `pytest -m "ecdsa and gnutls"`. What each case must do
comes from data files (harness/expectations.py): known failures are strict
expected failures with their reason, and on the default stack the signing
call the token saw must be the one in expected_mechanisms.toml.
"""

import pytest

from harness.expectations import ExpectedFailure


def test_handshake(p11_runner, p11_case, p11_record):
    record = p11_runner.run(p11_case)
    p11_record(record)
    if record.outcome == "skip":
        pytest.skip(record.error)
    verdict = p11_runner.verdict(p11_case, record)
    assert not verdict.problems, (
        f"{record.case_id}: {'; '.join(verdict.problems)} (logs: {record.logs.get('client')})"
    )
    if verdict.expected_failure:
        raise ExpectedFailure(verdict.expected_failure)
    assert record.signature_scheme, "the server saw no CertificateVerify"
