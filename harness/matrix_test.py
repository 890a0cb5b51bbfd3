"""The TLS client-auth matrix: key × provisioning × client × TLS version.

Shipped inside the package so an installed copy runs it without the source
tree: `pytest --pyargs harness.matrix_test [--p11-… options]` or
`p11tls run [--p11-… options]`; tests/test_matrix.py (the README's
`./run matrix`) imports this test function, so there is one source.

Parametrized by the p11tls plugin (`p11tls_case`; the `p11tls` marker asks
for it); select with markers, e.g.
`-m tls12`, `-m "ecdsa and gnutls"`. What each case must do comes from data
files keyed to the versions they were measured on (harness/verdict/expectations.py):
the library judges the record (passed, failed with its problems, an expected
failure with its reason, notes where nothing was measured on the versions
here), and the test gives pytest the same verdict.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.p11tls  # the plugin acts for this test: it is the matrix
def test_handshake(p11tls_runner: Any, p11tls_case: Any, p11tls_record: Any) -> None:
    record = p11tls_runner.judge(p11tls_case, p11tls_runner.run(p11tls_case))
    p11tls_record(record)
    if record.verdict == "skipped":
        pytest.skip(record.error)
    assert not record.problems, (
        f"{record.case_id}: {'; '.join(record.problems)} (logs: {record.logs.get('client')})"
    )
    if record.verdict == "xfailed":
        pytest.xfail(record.expected or "; ".join(record.unmeasured))
    assert record.verdict == "passed", record.verdict
