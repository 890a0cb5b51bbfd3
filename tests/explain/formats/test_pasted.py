"""The reader for any pasted text: wrapper exceptions, tool errors, OpenSSL and
NSS codes, and the TLS stacks' own failures; each family on real pasted text
(the develop part of the field corpus, or made here), with negative controls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from harness.commands.explain import explain_main
from harness.explain.client_side import RULE as NO_CALL
from harness.explain.explanation import explain, explain_file
from harness.explain.formats.pasted import parse
from harness.explain.model import LogFormat

DATA = Path(__file__).parents[2] / "data"
FIELD = DATA / "field" / "develop"  # never the held-out part: only the bench reads that
SEED001_JAVA = DATA / "explain" / "java-sslhandshake-signfinal.txt"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = explain_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def first(path: Path):
    explanation = explain_file(path)
    assert explanation.first_failure is not None
    return explanation, explanation.calls[explanation.first_failure]


DEVELOP = tomllib.loads((FIELD / "manifest.toml").read_text())["case"]


@pytest.mark.parametrize("case", DEVELOP, ids=[c["id"] for c in DEVELOP])
def test_develop_corpus_case(case):
    """Each pasted text of the develop part gives its thread's answer."""
    explanation = explain_file(FIELD / case["file"])
    assert explanation.format is LogFormat.PASTED or explanation.calls
    if case.get("no_failing_call"):
        assert explanation.first_failure is None
        assert [f.rule for f in explanation.findings] == [NO_CALL]
        return
    call = explanation.calls[explanation.first_failure]
    assert call.rv == case["rv"]
    assert call.fn == case.get("function", call.fn)
    assert explanation.next_steps and "p11tls run" in explanation.next_steps[0] + \
        " ".join(explanation.next_steps)


def test_seed001_java_exception_chain(capsys):
    """The Java chain of seed 001: the native frame names C_SignFinal; the finding
    cites the harness's measurement (picohsm-opensc) and the measured workaround."""
    explanation, call = first(SEED001_JAVA)
    assert (call.fn, call.rv, call.inferred) == ("C_SignFinal", "CKR_GENERAL_ERROR", False)
    measured = explanation.findings[0]
    assert measured.rule == "measured"
    assert "CKM_ECDSA_SHA256" in measured.summary and "picohsm-opensc" in measured.summary
    assert "2030 bytes" in measured.summary  # the measured size, from the outcomes file
    assert "java-nocombined" in measured.hint and "disabledMechanisms" in measured.hint
    steps = " ".join(explanation.next_steps)
    assert '--p11-existing -m "java and ecdsa and tls12"' in steps
    assert "--p11-profile picohsm-opensc" in steps and "p11tls token-sweep" in steps
    assert "-Djava.security.debug=sunpkcs11" in steps
    rc, out, err = run(capsys, str(SEED001_JAVA))
    assert rc == 0 and err == ""
    assert "Next, here:" in out and out.index("[measured]") < out.index("[failed-call]")


def test_seed001_issue_text_without_a_frame():
    """The thread's own words (no stack trace): the code, no function named, and
    still the measured facts for Java, P-256 and TLS 1.2."""
    explanation, call = first(FIELD / "pico-hsm-123.txt")
    assert (call.fn, call.rv) == ("C_?", "CKR_GENERAL_ERROR")
    assert any(f.rule == "measured" and "picohsm-opensc" in f.summary
               for f in explanation.findings)


def test_java_rsa_text_cites_no_ecdsa_fact():
    """Negative control: a Java RSA failure with another code gets no P-256 fact."""
    lines = ["Java 17, RSA 2048 key, TLS 1.3",
             "Caused by: sun.security.pkcs11.wrapper.PKCS11Exception: CKR_KEY_HANDLE_INVALID"]
    explanation = explain(parse(lines))
    assert not any("picohsm" in f.summary or "ECDSA" in f.summary for f in explanation.findings)
    (stack,) = [f for f in explanation.findings if f.rule == "measured"]
    assert "rsa2048 key in TLS 1.3" in stack.summary and "CKM_RSA_PKCS_PSS" in stack.summary
    assert '-m "java and rsa and tls13"' in " ".join(explanation.next_steps)


def test_openssl_libp11_error_line():
    """libp11 1.x errors carry the CKR code as their reason (0x21 = CKR_DATA_LEN_RANGE)."""
    explanation, call = first(FIELD / "libp11-122.txt")
    assert (call.fn, call.rv) == ("C_Sign", "CKR_DATA_LEN_RANGE") and call.inferred
    assert "C_Sign(" in call.inferred_from
    only_openssl = ["error:80009021:Vendor defined:PKCS11_rsa_encrypt:Data len range"]
    (event,) = parse(only_openssl).calls
    assert (event.fn, event.rv, event.inferred_from) == (
        "C_Sign", "CKR_DATA_LEN_RANGE", "`PKCS11_rsa_encrypt`")
    steps = " ".join(explain(parse(only_openssl)).next_steps)
    assert "p11tls token-sweep" in steps and "pkcs11-spy" in steps


def test_pkcs11_provider_reason_is_the_ckr_code():
    line = "40C7D1F5A97F0000:error:41000070:PKCS#11 module::Mechanism invalid:src/sig.c:123:"
    (event,) = parse([line]).calls
    assert event.rv == "CKR_MECHANISM_INVALID"
    assert "PKCS11_PROVIDER_DEBUG" in " ".join(explain(parse([line])).next_steps)
    # Control: libp11's own reasons (1024 and up) are no CKR code: the stack failed.
    own = parse(["error:FFFFFFFF8000B404:Vendor defined:PKCS11_rsa_verify:Not supported"])
    assert own.calls == () and own.client_errors


def test_openssl_refusing_the_key_is_no_failing_call():
    explanation = explain_file(FIELD / "pkcs11-provider-234.txt")
    assert explanation.first_failure is None and explanation.calls == ()
    (finding,) = explanation.findings
    assert finding.rule == NO_CALL and finding.call is None
    assert "No failing PKCS#11 call" in finding.summary and "do_sigver_init" in finding.summary


def test_pkcs11_tool_error(capsys):
    explanation, call = first(FIELD / "opensc-2953.txt")
    assert (call.fn, call.rv, call.inferred) == ("C_SignFinal", "CKR_GENERAL_ERROR", False)
    assert explanation.findings[0].rule == "failed-call"
    assert "--p11-existing" in explanation.next_steps[0]
    assert "OPENSC_DEBUG=9" in explanation.next_steps[-1]
    (event,) = parse(["error: PKCS11 function C_GetSlotList(NULL) failed: rv = "
                      "CKR_FUNCTION_FAILED (0x6)"]).calls
    assert (event.fn, event.rv) == ("C_GetSlotList", "CKR_FUNCTION_FAILED")


@pytest.mark.parametrize("line, fn, rv", [
    ("Method C_Sign Returned 2147483768", "C_Sign", "CKR_VENDOR_0x80000078"),
    ("sign_value() failed: C_Sign() failed: 0x00000007", "C_Sign", "CKR_ARGUMENTS_BAD"),
    ("PKCS#11 function CLogin failed: CKR_DATA_INVALID", "C_Login", "CKR_DATA_INVALID"),
    ("C_SignInit returns (CKR_GENERAL_ERROR - 5)", "C_SignInit", "CKR_GENERAL_ERROR"),
    ("Failed to initialize PKCS#11 library: pkcs11: 0x6: CKR_FUNCTION_FAILED",
     "C_Initialize", "CKR_FUNCTION_FAILED"),
    ("PKCS#11: Cannot initialize provider 'm.so' 6-'CKR_FUNCTION_FAILED'",
     "C_Initialize", "CKR_FUNCTION_FAILED"),
    ("Error: CKR_GENERAL_ERROR:5\n    at Error (native) PKCS11::C_Initialize:170",
     "C_Initialize", "CKR_GENERAL_ERROR"),
    ("Error code: SEC_ERROR_PKCS11_DEVICE_ERROR", "C_?", "CKR_DEVICE_ERROR"),
    ("C_Login rv=0xa0", "C_Login", "CKR_PIN_INCORRECT"),
])
def test_spellings(line, fn, rv):
    (event,) = parse(line.split("\n")).calls
    assert (event.fn, event.rv) == (fn, rv)


@pytest.mark.parametrize("text", [
    # a mechanism list (pkcs11-tool -M) and normal returns: nothing failed
    "Supported mechanisms:\n  ECDSA-SHA256, keySize={256,384}, sign, verify\n"
    "  RSA-PKCS, keySize={1024,4096}, hw, decrypt, sign, verify\nCKM_ECDSA_SHA256\n",
    "C_Login = CKR_OK\nReturned:  0 CKR_OK\n",
    # the specification's text about a code is no failure
    "The following codes could apply:\n- CKR_GENERAL_ERROR: Some horrible, unrecoverable "
    "thing has occurred.\n",
    # C_ identifiers that are no PKCS#11 functions, and a function without a code
    "C_Foo failed: 0x5\npkcs11.C_Initialize();\nC_SeedRandom() and C_GenerateRandom():\n",
])
def test_negative_controls_blame_nothing(capsys, tmp_path, text):
    path = tmp_path / "pasted.txt"
    path.write_text(text)
    assert parse(text.split("\n")).calls == ()
    rc, out, err = run(capsys, str(path))
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "unknown log format" in err and "Traceback" not in err


def test_unknown_text_says_what_to_capture(capsys, tmp_path):
    path = tmp_path / "npe.txt"
    path.write_text("Exception in thread \"main\" java.lang.NullPointerException\n"
                    "\tat sun.security.pkcs11.SunPKCS11.initToken(SunPKCS11.java:1000)\n")
    rc, out, err = run(capsys, str(path))
    assert rc == 2 and "Java SunPKCS11" in err and "-Djava.security.debug=sunpkcs11" in err
    path.write_text("hello\nworld\n")
    rc, out, err = run(capsys, str(path))
    assert rc == 2 and "pkcs11-spy" in err  # nothing recognisable: the generic capture


def test_python_pkcs11_traceback_made_here(capsys, tmp_path):
    """A real python-pkcs11 traceback: a wrong PIN on a throw-away SoftHSM2 token."""
    from harness.errors import HarnessError, ToolMissing
    from harness.token.softhsm import TemporarySoftHSM

    try:
        store = TemporarySoftHSM(tmp_path / "softhsm")
        store.init_token("explain", "123456")
    except (ToolMissing, HarnessError) as exc:
        pytest.skip(f"Requires SoftHSM2: {exc}")
    script = ("import os, pkcs11\n"
              "token = pkcs11.lib(os.environ['MODULE']).get_token(token_label='explain')\n"
              "with token.open(user_pin='987654') as session:\n    pass\n")
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**os.environ, **store.env, "MODULE": str(store.module)},
                              timeout=60, check=False)
    finally:
        store.remove()
    assert "pkcs11.exceptions.PinIncorrect" in done.stderr
    path = tmp_path / "traceback.txt"
    path.write_text(done.stderr)
    explanation, call = first(path)
    assert (call.fn, call.rv, call.inferred) == ("C_Login", "CKR_PIN_INCORRECT", True)
    assert explanation.findings[0].rule == "pin"
    assert "do not try that PIN again" in explanation.next_steps[0]
    rc, out, err = run(capsys, str(path), "--json")
    assert rc == 0 and "987654" not in out
    assert json.loads(out)["calls"][0]["inferred_from"] == "the code CKR_PIN_INCORRECT"


def test_wrapper_method_is_said_to_be_inferred(capsys):
    explanation, call = first(FIELD / "pykcs11-11.txt")
    assert (call.fn, call.inferred_from) == ("C_GenerateKeyPair", "`generateKeyPair`")
    rc, out, err = run(capsys, str(FIELD / "pykcs11-11.txt"))
    assert "function inferred from `generateKeyPair`" in out


def test_no_pin_echoed_text_or_json(capsys, tmp_path):
    text = (FIELD / "curl-3692.txt").read_text().replace("pin-value=****", "pin-value=s3cr3tPIN")
    path = tmp_path / "curl.txt"
    path.write_text(text)
    for args in ((), ("--json",)):
        rc, out, err = run(capsys, str(path), *args)
        assert rc == 0 and "s3cr3tPIN" not in out + err and "pin-value=***" in out


def test_pins_quoted_in_code_are_masked(capsys, tmp_path):
    """Tracebacks quote source lines and configurations: their PINs never show."""
    path = tmp_path / "traceback.txt"
    path.write_text('Traceback (most recent call last):\n'
                    '  File "sign.py", line 4, in <module>\n'
                    '    with token.open(user_pin="55512345") as session:\n'
                    '  File "pkcs11/_pkcs11.pyx", line 51, in pkcs11._pkcs11.assertRV\n'
                    'pkcs11.exceptions.PinIncorrect\n'
                    'pkcs11-tool --so-pin 3537363231383830 --login --pin 55512345\n'
                    'PyKCS11.PyKCS11Error: CKR_PIN_INCORRECT (0x000000a0)\n')
    for args in ((), ("--json",)):
        rc, out, err = run(capsys, str(path), *args)
        assert rc == 0 and "55512345" not in out and "3537363231383830" not in out
    # Control: PIN flags and codes are no PIN values.
    explanation = explain(parse(["Returned:  5 CKR_PIN_INCORRECT", "PIN_FLAG = 3"]))
    assert explanation.failure_excerpt[0][1] == "Returned:  5 CKR_PIN_INCORRECT"
