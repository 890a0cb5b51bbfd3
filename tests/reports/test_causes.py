"""Causes, not cells: the terminal summary, matrix.md and matrix.html open with
the causes of the run's failures, each once, with its cases and workaround.
The explanations are those `p11tls explain` gives for real and sample logs."""

from __future__ import annotations

from pathlib import Path

from harness.explain.explanation import explain_file
from harness.reports.causes import failure_causes
from harness.explain.no_sign import explain_without_signing
from harness.reports.html import render_html
from harness.reports.markdown import render_markdown
from harness.matrix.record import HandshakeRecord
from harness.reports.terminal import terminal_matrix

DATA = Path(__file__).parents[1] / "data" / "explain"


def _record(case_id: str, outcome: str = "fail", explanation: dict | None = None,
            error: str | None = None) -> HandshakeRecord:
    client, key, prov, tls = case_id.split("-")
    return HandshakeRecord(case_id=case_id, client=client, key=key, provisioning=prov,
                           tls=tls.removeprefix("tls1") and "1." + tls[-1], outcome=outcome,
                           explanation=explanation, error=error)


def _night() -> list[HandshakeRecord]:
    combined = {"findings": explain_file(DATA / "seed001-opensc.log").to_json()["findings"]}
    no_pss = explain_without_signing(["CKM_RSA_PKCS", "CKM_ECDSA"], "rsa2048", "TLS1.3")
    records = [_record(f"java-{k}-{p}-tls12", explanation=combined)
               for k in ("p256", "p384") for p in ("generate", "import")]
    records += [_record(f"{c}-rsa2048-{p}-tls13", explanation=no_pss)
                for c in ("gnutls", "opensslengine") for p in ("generate", "import")]
    records.append(_record("gnutls-p256-generate-tls13", outcome="ok"))
    return records


def test_eight_failing_cells_two_causes():
    causes = failure_causes(_night())
    assert [len(c.cases) for c in causes] == [4, 4]
    assert {c.key.split()[0] for c in causes} == {"combined-mechanism-large-input",
                                                 "tls13-rsa-without-pss"}
    assert all(c.workaround for c in causes)
    # Control: the ok case is no cause, and a run without failures has none.
    assert all("gnutls-p256-generate-tls13" not in c.cases for c in causes)
    assert failure_causes([_record("gnutls-p256-generate-tls13", outcome="ok")]) == []


def test_reports_give_the_causes_once():
    records = _night()
    md = render_markdown(records)
    assert md.index("## Causes of the failures (2 for 8 failed cases)") < md.index("| key |")
    html = render_html(records)
    # the HTML page leads with the matrix, then the causes (cases behind a disclosure)
    assert html.index("<table") < html.index("Causes of the failures")
    causes = html[html.index('<section class="causes">'):]
    assert 'href="#g' in causes and "<details><summary>the cases</summary>" in causes
    term = terminal_matrix(records)
    assert term.startswith("Causes of the failures:\n1. ")
    assert term.count("Workaround:") == 2
    ok = [r for r in records if r.outcome == "ok"]
    assert "Causes" not in render_markdown(ok) + render_html(ok) + terminal_matrix(ok)


def test_unexplained_failures_are_grouped_by_their_code():
    records = [_record(f"java-p256-generate-tls1{v}", error="CKR_DEVICE_ERROR in C_Sign")
               for v in "23"]
    (cause,) = failure_causes(records)
    assert cause.title.startswith("CKR_DEVICE_ERROR") and len(cause.cases) == 2


def test_a_failure_without_signing_call_says_why_in_its_cell():
    from harness.reports.layout import cell_text

    no_pss = explain_without_signing(["CKM_RSA_PKCS"], "rsa2048", "TLS1.3")
    assert cell_text(_record("gnutls-rsa2048-generate-tls13", explanation=no_pss)) == (
        "fail: tls13-rsa-without-pss")
    assert cell_text(_record("gnutls-rsa2048-generate-tls13")) == "fail"  # control


TPM2_ENGINE = ("s_client -engine pkcs11 makes the libp11 engine OpenSSL's default for every "
               "algorithm; tpm2-pkcs11's TSS (tss2-esys) then gets the engine for the ECDH of "
               "its TPM session and fails, so C_Login returns CKR_GENERAL_ERROR")


def _login_failure() -> dict:
    """The explanation a C_Login -> CKR_GENERAL_ERROR gets from the general rule."""
    from harness.explain.explanation import explain
    from harness.explain.formats.pasted import parse

    lines = ["error: PKCS11 function C_Login failed: rv = CKR_GENERAL_ERROR (0x5)"]
    return {"findings": explain(parse(lines)).to_json()["findings"]}


def test_known_reason_groups_the_case_never_pin_advice():
    """The tpm2 engine case of issue 19: its known reason is in the record; it is
    grouped under that reason, apart, with no advice to try the PIN."""
    records = [_record(f"opensslengine-{k}-generate-tls13", explanation=_login_failure(),
                       error="C_Login CKR_GENERAL_ERROR") for k in ("p256", "rsa2048")]
    for record in records:
        record.expected = TPM2_ENGINE
    records.append(_record("gnutls-p256-generate-tls13", explanation=_login_failure()))
    causes = failure_causes(records)
    assert [c.expected for c in causes] == [False, True]  # the unexpected one first
    known = causes[1]
    assert known.cases == ("opensslengine-p256-generate-tls13",
                           "opensslengine-rsa2048-generate-tls13")
    assert "expected" in known.title and "C_Login returns CKR_GENERAL_ERROR" in known.title
    for cause in causes:
        assert "PIN" not in cause.workaround or "do not try it again" in cause.workaround
        assert "retry counter" not in cause.workaround
    # Control: the expected group is no "(no explanation in the record)".
    assert all("no explanation" not in c.title for c in causes)


def test_pin_advice_only_for_pin_codes():
    from harness.explain.explanation import explain
    from harness.explain.formats.pasted import parse

    wrong = explain(parse(["error: PKCS11 function C_Login failed: rv = CKR_PIN_INCORRECT (0xa0)"]))
    record = _record("gnutls-p256-generate-tls13", explanation={"findings": wrong.to_json()["findings"]})
    (cause,) = failure_causes([record])
    assert "CKR_PIN_INCORRECT" in cause.title
    assert "retry counter" in cause.workaround  # read it (read-only) before any other try
    other = failure_causes([_record("gnutls-p256-generate-tls13", explanation=_login_failure())])
    assert "retry counter" not in other[0].workaround
