"""OpenSC debug logs: the seeds' excerpts and a log made here."""

from __future__ import annotations

from explain_helpers import DATA

from harness.explain.explanation import parse_file
from harness.explain.model import LogFormat


def test_seed000_opensc_excerpt_infers_the_import_and_its_reason():
    (call,) = parse_file(DATA / "seed000-opensc.log").calls
    assert call.fn == "C_CreateObject" and call.inferred and call.rv is None
    assert call.object_class == "CKO_PRIVATE_KEY" and call.curve == "P-256"
    assert "-1503 (Key length/algorithm not supported by card)" in call.detail


def test_seed001_opensc_apdu_trace():
    parsed = parse_file(DATA / "seed001-opensc.log")
    assert parsed.format is LogFormat.OPENSC_DEBUG
    init, final = parsed.calls
    assert (init.fn, init.mechanism, init.key_type, init.rv) == (
        "C_SignInit",
        "CKM_ECDSA_SHA256",
        "CKK_EC",
        "CKR_OK",
    )
    assert (final.fn, final.mechanism, final.input_bytes, final.rv) == (
        "C_SignFinal",
        "CKM_ECDSA_SHA256",
        6039,
        "CKR_GENERAL_ERROR",
    )
    assert (final.apdu_bytes, final.apdu_wire_bytes) == (6039, 6048)
    assert "0x80100016 (SCARD_E_NOT_TRANSACTED)" in final.reader_error



def test_opensc_real_debug_log(opensc_debug_log):
    parsed = parse_file(opensc_debug_log)
    assert parsed.format is LogFormat.OPENSC_DEBUG
    assert ("C_Initialize", "CKR_OK") in [(c.fn, c.rv) for c in parsed.calls]
