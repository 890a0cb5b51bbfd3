"""The TLS client-auth matrix (`./run matrix`): the packaged test,
harness/matrix_test.py, collected here under this file's name.

Select with markers, e.g. `pytest tests/test_matrix.py -m tls12`; an installed
copy runs the same test with `pytest --pyargs harness.matrix_test` or `p11tls run`.
"""

from harness.matrix_test import test_handshake

__all__ = ["test_handshake"]
