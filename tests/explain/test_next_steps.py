"""Every explanation ends with what to run here: the user's token (read-only
where it can show the failure), the profile that reproduces it, token-sweep
when an input limit is suspected, and the log to capture next."""

from __future__ import annotations

from explain_helpers import DATA

from harness.explain.explanation import explain, explain_file
from harness.explain.formats.pasted import parse


def test_import_refusal_points_at_a_run_that_imports_and_its_profile():
    steps = " ".join(explain_file(DATA / "seed000-spy.log").next_steps)
    assert '-m "import and ecdsa"' in steps and "cannot show an import" in steps
    assert "--p11-profile nitrokey-start-opensc" in steps
    assert "token-sweep" not in steps  # no input limit in an import


def test_size_failure_points_at_token_sweep_and_the_limit_profile():
    explanation = explain_file(DATA / "seed001-opensc.log")
    steps = " ".join(explanation.next_steps)
    assert "p11tls token-sweep" in steps and "--mechanisms CKM_ECDSA_SHA256" in steps
    assert "--p11-profile picohsm-opensc" in steps and "--p11-existing" in steps
    assert "pkcs11-spy" in explanation.next_steps[-1]  # an OpenSC debug log: capture a spy log


def test_locked_pin_gets_no_run_and_no_retry():
    steps = explain(parse(["error: PKCS11 function C_Login failed: rv = CKR_PIN_LOCKED (0xa4)"]))
    assert "unblock" in steps.next_steps[0]
    assert not any("p11tls run" in s for s in steps.next_steps)


def test_no_size_failure_suggests_no_sweep_and_no_profile():
    ok = explain(parse(["Caused by: sun.security.pkcs11.wrapper.PKCS11Exception: "
                        "CKR_KEY_HANDLE_INVALID"]))
    joined = " ".join(ok.next_steps)
    assert "token-sweep" not in joined and "--p11-profile" not in joined
    assert "--p11-existing" in joined and '-m "java"' in joined
