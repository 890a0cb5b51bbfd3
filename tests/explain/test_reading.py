"""Reading what the user passes: bounded by the bytes actually read, so
/dev/zero and binaries are refused at once, and a large log is read in a
window around its first failure (memory stays bounded; bench_explain.py
measures 200 MB)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.explain.explanation import explain_file
from harness.explain.formats import detect

BLOCK = """{n}: C_SignInit
2024-11-14 13:25:13.497
[in] hSession = 0x5fb130
pMechanism->type=CKM_ECDSA
[in] hKey = 0x2
Returned:  0 CKR_OK

{m}: C_Sign
2024-11-14 13:25:13.498
[in] hSession = 0x5fb130
[in] pData[ulDataLen] 00007ffd2709bdf0 / 32
    00000000  29 B0 E7 87 82 71 64 5F FF B7 EE C7 DB 4A 74 73  )....qd_.....Jts
    00000010  29 B0 E7 87 82 71 64 5F FF B7 EE C7 DB 4A 74 73  )....qd_.....Jts
Returned:  0 CKR_OK

"""


def test_dev_zero_is_refused_before_anything_is_read():
    path = Path("/dev/zero")
    if not path.exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        detect.read_log(path)


def test_text_then_binary_is_refused(tmp_path):
    path = tmp_path / "mixed.log"
    path.write_bytes(b"\x00\x01\x02\x03" * 40000)
    with pytest.raises(ConfigError, match="binary"):
        explain_file(path)


def _spy(path: Path, megabytes: float, failure: bool) -> None:
    with path.open("w") as out:
        n = 0
        while out.tell() < megabytes * 1_000_000:
            out.write("".join(BLOCK.format(n=n + 2 * i, m=n + 2 * i + 1) for i in range(500)))
            n += 1000
        if failure:
            out.write(f"{n}: C_Sign\n[in] hSession = 0x5fb130\n"
                      "[in] pData[ulDataLen] 00007ffd2709bdf0 / 32\n"
                      "Returned:  5 CKR_GENERAL_ERROR\n")


def test_large_log_is_read_around_its_first_failure(tmp_path):
    path = tmp_path / "big-spy.log"
    _spy(path, detect.WINDOW_START / 1e6 + 2, failure=True)
    explanation = explain_file(path)
    call = explanation.calls[explanation.first_failure]
    assert (call.fn, call.rv) == ("C_Sign", "CKR_GENERAL_ERROR")
    assert any("large log" in p and "first failing return value" in p
               for p in explanation.problems)


def test_large_log_without_failure_is_read_at_its_end(tmp_path):
    path = tmp_path / "big-ok.log"
    _spy(path, detect.WINDOW_START / 1e6 + 2, failure=False)
    explanation = explain_file(path)
    assert explanation.first_failure is None
    assert any("its end" in p for p in explanation.problems)
    # Control: a small log is read whole, with no such note.
    small = tmp_path / "small.log"
    _spy(small, 0.1, failure=True)
    assert not any("large log" in p for p in explain_file(small).problems)
