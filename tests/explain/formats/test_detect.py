"""Telling the format of a log, also with prose pasted around it."""

from __future__ import annotations

import pytest
from explain_helpers import DATA

from harness.explain.explanation import explain_file
from harness.explain.formats.detect import detect_format, read_log
from harness.explain.model import LogFormat


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("seed000-spy.log", LogFormat.PKCS11_SPY),
        ("seed000-opensc.log", LogFormat.OPENSC_DEBUG),
        ("seed001-opensc.log", LogFormat.OPENSC_DEBUG),
        ("pkcs11-logger-rsa-no-pss.log", LogFormat.PKCS11_LOGGER),
    ],
)
def test_format_detection_on_samples(name, expected):
    assert detect_format(read_log(DATA / name)) is expected


def test_pasted_issue_text_is_read_as_its_dominant_format(tmp_path):
    """Seed 000 as pasted: prose, the spy log, prose, then OpenSC debug lines."""
    pasted = tmp_path / "issue.txt"
    pasted.write_text(
        "I'm trying to import an EC key and get CKR_GENERAL_ERROR.\n\n"
        + (DATA / "seed000-spy.log").read_text()
        + "\nI tested with OpenSC debug mode and get the following log:\n\n"
        + (DATA / "seed000-opensc.log").read_text()
        + "\nWhy is the key not accepted?\n"
    )
    explanation = explain_file(pasted)
    assert explanation.format is LogFormat.PKCS11_SPY
    assert [f.rule for f in explanation.findings] == ["openpgp-import", "import-refused"]
