"""The TLS client-auth matrix: key × provisioning × client × TLS version.

Parametrized by the p11tls plugin (`p11_case`); select with markers, e.g.
`pytest -m tls12`, `pytest -m "ecdsa and gnutls"`. What each case must do
comes from data files keyed to the versions they were measured on
(harness/expectations.py): the library judges the record (passed, failed with
its problems, an expected failure with its reason, notes where nothing was
measured on the versions here), and the test gives pytest the same verdict.
"""

import pytest


def test_handshake(p11_runner, p11_case, p11_record):
    record = p11_runner.judge(p11_case, p11_runner.run(p11_case))
    p11_record(record)
    if record.verdict == "skipped":
        pytest.skip(record.error)
    assert not record.problems, (
        f"{record.case_id}: {'; '.join(record.problems)} (logs: {record.logs.get('client')})"
    )
    if record.verdict == "xfailed":
        pytest.xfail(record.expected or "; ".join(record.unmeasured))
    assert record.verdict == "passed", record.verdict
