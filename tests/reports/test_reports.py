"""Reports from results files: matrix.html, matrix.md, merge and diff.

Fixtures: tests/data/results/softhsm-real.json is a real run of the default
matrix (log paths made relative, calls cut to the C_Sign* ones); lab1.json is
a small hand-made run in the shape records are growing into (sign summary,
calls, a known failure, an error, a skip) with log files under tests/data/results/logs/. (Not under
tests/data/reports/: .gitignore's `reports/` would hide them.)
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.reports import html as html_report
from harness.commands.diff import diff_main
from harness.commands.merge import merge_main
from harness.commands.report import report_main
from harness.reports.compare import ChangeKind, diff, merge
from harness.reports.files import load_results, write_reports
from harness.reports.html import render_html
from harness.reports.markdown import render_markdown
from harness.reports.layout import cell_text
from harness.matrix.record import HandshakeRecord

DATA = Path(__file__).parents[1] / "data" / "results"
REAL = DATA / "softhsm-real.json"
LAB1 = DATA / "lab1.json"


def lab1() -> list[HandshakeRecord]:
    return load_results(LAB1)


def by_id(records: list[HandshakeRecord], case_id: str) -> HandshakeRecord:
    return next(r for r in records if r.case_id == case_id)


class MatrixPage(HTMLParser):
    """What a test needs from the page: cases with their cell's class, tables,
    and every URL a browser would fetch or follow."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cases: list[str] = []
        self.cell_class: dict[str, str] = {}
        self.tables = 0
        self.urls: list[str] = []
        self.tags: Counter[str] = Counter()
        self._td_class = ""
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] += 1
        if tag == "td":
            self._td_class = (a.get("class") or "").split(" ")[0]  # then the client's group
        if tag == "table" and "matrix" in (a.get("class") or ""):
            self.tables += 1
        if tag == "details" and a.get("data-case"):
            self.cases.append(a["data-case"] or "")
            self.cell_class[a["data-case"] or ""] = self._td_class
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "action", "data")]


def remote_urls(page: MatrixPage, text: str) -> list[str]:
    found = [u for u in page.urls if re.match(r"(?i)\s*(https?:)?//", u)]
    return found + re.findall(r"(?i)url\(\s*['\"]?(?:https?:)?//", text)


def case_problems(page: MatrixPage, records: list[HandshakeRecord]) -> list[str]:
    """Cases missing from the page or shown more than once."""
    counts = Counter(page.cases)
    expected = Counter(r.case_id for r in records)
    return [f"{c}: {counts[c]}x" for c in expected | counts if counts[c] != expected[c]]


# --- matrix.html ----------------------------------------------------------------------


@pytest.mark.parametrize("source", [REAL, LAB1], ids=["real-run", "lab1"])
def test_html_parses_and_shows_every_case_once(source):
    records = load_results(source)
    text = render_html(records, log_base=DATA)
    page = MatrixPage(text)
    assert case_problems(page, records) == []
    assert page.tables == 1
    assert text.startswith("<!DOCTYPE html>")


def test_case_check_catches_a_missing_case():
    # negative control for the check above: a page without one case fails it
    records = lab1()
    page = MatrixPage(render_html(records[1:], log_base=DATA))
    assert case_problems(page, records) == [f"{records[0].case_id}: 0x"]


def test_html_marks_failing_cells():
    page = MatrixPage(render_html(lab1(), log_base=DATA))
    assert page.cell_class["java-p256-generate-tls12"] == "fail"
    assert page.cell_class["java-rsa2048-import-tls13"] == "fail"  # harness error
    assert page.cell_class["openssl-engine-rsa2048-import-tls13"] == "known"
    # negative controls: passing and skipped cells are not marked as failures
    assert page.cell_class["openssl-engine-p256-generate-tls12"] == "ok"
    assert page.cell_class["java-rsa2048-generate-tls13"] == "skip"
    assert "td.fail { background: #f2a7a7" in html_report.STYLE


def test_html_is_self_contained():
    text = render_html(load_results(REAL), log_base=DATA)
    page = MatrixPage(text)
    assert remote_urls(page, text) == []
    assert page.tags["script"] == 0 and page.tags["link"] == 0


def test_remote_url_check_catches_a_fetch():
    # negative control: the same page with one remote image fails the check
    text = render_html(lab1(), log_base=DATA).replace(
        "<body>", '<body><img src="https://cdn.example/x.png">')
    assert remote_urls(MatrixPage(text), text) == ["https://cdn.example/x.png"]


def test_record_text_is_escaped():
    hostile = dataclasses.replace(
        by_id(lab1(), "java-p256-generate-tls12"),
        error='<script src="https://evil.example/x.js"></script> CKR_GENERAL_ERROR')
    text = render_html([hostile], log_base=DATA)
    page = MatrixPage(text)
    assert page.tags["script"] == 0 and remote_urls(page, text) == []
    assert "&lt;script src=&quot;https://evil.example/x.js&quot;&gt;" in text


def test_details_show_calls_logs_and_sign_summary():
    text = render_html(lab1(), log_base=DATA)
    assert "C_SignFinal</td>" in text and 'class="bad"' in text
    assert "CKM_ECDSA_SHA256, multi-part (1 C_SignUpdate), 3037 bytes in, CKR_GENERAL_ERROR" in text
    assert "Signature Algorithm: ecdsa_secp256r1_sha256" in text  # server log tail read
    assert "&lt;script&gt;alert" in text and "<script>alert" not in text  # client log escaped
    assert "logs/missing/server.log</h4><p>(not available on this machine)" in text


def test_log_tails_mask_pins():
    text = render_html(lab1(), log_base=DATA)
    assert "648219" not in text  # the PIN in a pin-value URI and in a pkcs11-spy hex dump
    assert "pin-value=***" in text and "******** (masked)" in text
    # negative control: the fixture logs do hold the PIN
    logs = "".join(p.read_text() for p in (DATA / "logs").rglob("*.log"))
    assert logs.count("648219") == 2


def test_mask_secrets_leaves_lookalikes():
    (line,) = html_report.mask_secrets(["spin=3 pin-sha256:abc --pin 1234 pass:secret"])
    assert line == "spin=3 pin-sha256:abc --pin *** pass:***"


def test_calls_table_from_real_records():
    records = load_results(REAL)
    record = next(r for r in records if r.case_id == "gnutls-rsa2048-generate-tls12")
    text = render_html([record])
    assert ("<td>C_SignInit</td><td>CKM_RSA_PKCS_PSS (hash=CKM_SHA256, mgf=CKG_MGF1_SHA256,"
            " salt_len=32)</td>") in text
    assert "key CKK_RSA p11tls-" in text
    # the interposer's bookkeeping (pid, timestamps) and numeric CKM_ values stay out
    assert "pid=" not in text and "ts=" not in text and "value=" not in text
    assert '"pid"' in REAL.read_text()  # negative control: they are in the record


def test_log_tails_are_capped(tmp_path):
    log = tmp_path / "client.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))
    record = dataclasses.replace(lab1()[0], logs={"client": str(log)})
    text = render_html([record])
    assert "line 99999" in text and "line 0\n" not in text
    assert len(text) < 40_000
    # negative control: a short log is shown whole
    log.write_text("first\nlast\n")
    assert "first\nlast</pre>" in render_html([record])


def test_long_errors_are_capped():
    record = by_id(lab1(), "java-p256-generate-tls12")
    long = dataclasses.replace(record, error="at sun.security.pkcs11.P11Signature\n" * 2000)
    assert len(render_html([long])) < len(render_html([record])) + 6000
    assert "more characters)" in render_html([long])
    assert "more characters)" not in render_html([record])  # negative control


def test_explanation_shown_when_present():
    record = by_id(lab1(), "java-p256-generate-tls12")
    assert "Explanation" not in render_html([record])
    record.explanation = "combined CKM_ECDSA_SHA256 over a 3037-byte transcript"  # type: ignore[attr-defined]
    assert "<h4>Explanation</h4><pre>combined CKM_ECDSA_SHA256" in render_html([record])
    record.explanation = {"format": "harness", "findings": [  # type: ignore[attr-defined]
        {"rule": "combined-mechanism-large-input", "summary": "CKM_ECDSA_SHA256 over 3037 B",
         "call": 2, "hint": "disable CKM_ECDSA_SHA256 in the SunPKCS11 config"}]}
    text = render_html([record])
    assert "<li>combined-mechanism-large-input: CKM_ECDSA_SHA256 over 3037 B<br><i>disable" in text


def test_emulation_profile_gets_its_own_labelled_table():
    records = lab1()
    emulated = [dataclasses.replace(r, profile="picohsm-emu") for r in records]
    text = render_html(records + emulated, log_base=DATA)
    page = MatrixPage(text)
    assert page.tables == 2
    assert Counter(page.cases) == Counter(r.case_id for r in records + records)
    assert "emulation of picohsm (profile picohsm-emu)" in text
    # negative control: without a profile nothing says emulation
    assert "emulation" not in render_html(records, log_base=DATA)


def test_matrix_has_a_column_per_client_and_the_tls_version_as_a_row():
    text = render_html(load_results(REAL), log_base=DATA)
    clients = re.findall(r'<th class="client g1c\d+">([^<]+)</th>', text)
    assert "openssl-engine" in clients and "java" in clients
    assert len(clients) == len(set(clients))  # one column each, not one per TLS version
    assert "TLS1.2</th>" not in text and "openssl-engine TLS1.2" not in text
    # the key once for its rows (2 provisionings x 2 versions), the provisioning once
    # for its versions, then a row per version
    assert text.count('<th class="key" rowspan="4">rsa2048</th>') == 1
    assert text.count('<th class="label" rowspan="2">generate</th>') == text.count(
        '<th class="key" rowspan="4">') == text.count('<th class="label" rowspan="2">import</th>')
    assert text.count('<th class="tls">1.2</th>') == text.count('<th class="tls">1.3</th>') > 0


def test_matrix_scrolls_in_its_own_box():
    # a matrix wider than the window must not widen the page: an opened case's
    # panel is placed against the page and would open outside the view
    text = render_html(load_results(REAL), log_base=DATA)
    assert text.count('<div class="scroll"><table class="matrix">') == 1
    assert "div.scroll { overflow-x: auto;" in html_report.STYLE


def test_cell_summary_puts_the_signing_call_on_its_own_line():
    records = lab1()
    failed = render_html([by_id(records, "java-p256-generate-tls12")])
    assert ('>CKR_<wbr>GENERAL_<wbr>ERROR <span class="sign">ECDSA_<wbr>SHA256 3037B</span>'
            "</summary>") in failed
    known = render_html([by_id(records, "openssl-engine-rsa2048-import-tls13")])
    assert ('>CKR_<wbr>TEMPLATE_<wbr>INCONSISTENT<span class="gap"> </span>(known)</summary>'
            in known)
    # a pass of a listed failure is a failure (as pytest's strict xfail counts it)
    passed = dataclasses.replace(by_id(records, "openssl-engine-p256-generate-tls12"),
                                 expected="seed 002: the card refused this before")
    page = render_html([passed])
    assert '<summary title="failed: passed, but listed as a known failure: seed 002' in page
    assert '>failed <span class="sign">ECDSA 32B</span></summary>' in page
    assert "(known)" not in page  # a cell that passed never says known failure
    assert ".matrix .sign { display: block; }" in html_report.STYLE


def test_skipped_case_says_why():
    text = render_html([by_id(lab1(), "java-rsa2048-generate-tls13")])
    reason = by_id(lab1(), "java-rsa2048-generate-tls13").error
    assert reason and f'<summary title="skipped: {reason}">skip</summary>' in text
    assert f"<dt>skipped because</dt><dd>{reason}</dd>" in text
    # negative control: a failed case's reason is its error
    assert "<dt>error</dt>" in render_html([by_id(lab1(), "java-p256-generate-tls12")])


def test_table_index_only_for_several_tables():
    merged = merge([lab1(), lab1()], ["night/lab1.json", "night/lab2.json"])
    text = render_html(merged)
    assert '<li><a href="#group-1">lab1 · PKCS#15 emulated' in text
    assert '<a href="#group-2">lab2 · ' in text and 'id="group-2"' in text
    assert remote_urls(MatrixPage(text), text) == []
    assert '<ul class="toc">' not in render_html(lab1())  # negative control: one table


def test_result_counts_are_pytests():
    text = render_markdown(lab1())
    assert "4 passed, 2 failed, 1 xfailed, 1 skipped" in text
    two = lab1() + [dataclasses.replace(by_id(lab1(), "openssl-engine-rsa2048-import-tls13"),
                                        case_id="openssl-engine-rsa2048-import-tls12", tls="1.2")]
    assert "4 passed, 2 failed, 2 xfailed, 1 skipped" in render_markdown(two)
    result = next(line for line in text.splitlines() if line.startswith("- **Result:**"))
    assert "unmeasured" not in result  # nothing unmeasured: no note


def in_browser(html: str, tmp_path: Path, window: int, expression: str) -> str:
    """The value of a JS expression on the page in headless Chromium at
    window × 900 px."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (./run test installs it on the machine's own "
                    "release, not inside a chroot)")
    page = tmp_path / "measure.html"
    page.write_text(html.replace("</body>", f"<script>document.title = 'W ' + "
                                 f"({expression});</script></body>"))
    profile = tmp_path / "profile"
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", f"--window-size={window},900",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=60, check=False).stdout
    found = re.search(r"<title>W ([^<]*)</title>", out)
    assert found, out[-2000:]
    return found.group(1)


def page_width(html: str, tmp_path: Path, window: int,
               element: str = "document.documentElement") -> tuple[int, int]:
    """(scroll width, visible width) of the page (or of `element`, a JS
    expression) in headless Chromium."""
    scroll, client = in_browser(html, tmp_path, window,
                                f"{element}.scrollWidth + ' ' + {element}.clientWidth").split()
    return int(scroll), int(client)


@pytest.mark.parametrize("window", [1000, 1600])
def test_page_does_not_overflow_sideways_in_a_browser(tmp_path, window):
    text = render_html(load_results(REAL), log_base=DATA)
    scroll, client = page_width(text, tmp_path, window)
    assert scroll <= client
    # negative control: the measurement does see a page wider than the window
    wide = text.replace("</body>", '<div style="width: 3000px">x</div></body>')
    scroll, client = page_width(wide, tmp_path, window)
    assert scroll > client


@pytest.mark.parametrize(("case_id", "text"), [
    ("openssl-engine-p256-generate-tls12", "ok ECDSA 32B"),
    ("java-p256-generate-tls12", "CKR_GENERAL_ERROR ECDSA_SHA256 3037B"),
    ("openssl-engine-rsa2048-generate-tls13", "ok RSA_PKCS_PSS 32B"),
    ("openssl-engine-rsa2048-import-tls13", "CKR_TEMPLATE_INCONSISTENT"),  # CKR from error
    ("java-rsa2048-import-tls13", "error"),  # no CKR code anywhere
    ("java-rsa2048-generate-tls13", "skip"),
])
def test_cell_text(case_id, text):
    assert cell_text(by_id(lab1(), case_id)) == text


def test_cell_text_falls_back_to_signature_scheme():
    record = by_id(lab1(), "openssl-engine-p256-generate-tls12")
    assert cell_text(dataclasses.replace(record, sign=None)) == "ok ecdsa_secp256r1_sha256"
    assert cell_text(dataclasses.replace(record, sign=None, signature_scheme=None)) == "ok"


# --- matrix.md ------------------------------------------------------------------------


def md_tables(text: str) -> list[list[list[str]]]:
    """Markdown tables as rows of cells (split on unescaped pipes)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            if current is None:
                current = []
                tables.append(current)
            current.append([c.strip() for c in cells])
        else:
            current = None
    return tables


def test_markdown_table_shape_and_header():
    records = load_results(REAL)
    text = render_markdown(records)
    (table,) = md_tables(text)
    header, rule, *rows = table
    assert header[:2] == ["key", "provisioning"]
    assert "gnutls TLS1.2" in header and "openssl-engine TLS1.3" in header
    assert set(rule) == {"---"}
    assert all(len(row) == len(header) for row in table)
    assert len(rows) == len({(r.key, r.provisioning) for r in records})
    assert sum(cell.startswith("ok") for row in rows for cell in row) == sum(
        r.outcome == "ok" for r in records)
    assert "/usr/lib/softhsm/libsofthsm2.so" in text and "firmware 2.6" in text
    assert "gnutls-cli 3.7.9" in text and "OpenSSL 3.0" in text and "OpenJDK" in text
    assert "| ok ECDSA 32B |" in text and "ok RSA\\_PKCS\\_PSS" not in text


def test_markdown_marks_failures_and_known_reasons():
    text = render_markdown(lab1())
    assert "❌ CKR_GENERAL_ERROR ECDSA_SHA256 3037B" in text
    assert "⚠️ CKR_TEMPLATE_INCONSISTENT [1]" in text
    assert "1. openssl-engine-rsa2048-import-tls13: the card refuses private-key import" in text
    assert "❌ ok" not in text and "⚠️ ok" not in text  # negative control


def test_markdown_escapes_pipes():
    record = dataclasses.replace(lab1()[0], provisioning="gen|erate")
    (table,) = md_tables(render_markdown([record]))
    assert all(len(row) == len(table[0]) for row in table)
    assert table[2][1] == "gen\\|erate"
    # negative control: the shape check does see an unescaped pipe
    assert len(md_tables("| a | b |\n| c | d | e |")[0][1]) == 3


# --- merge ----------------------------------------------------------------------------


def test_merge_of_two_hosts_gives_two_tables():
    notes: list[str] = []
    merged = merge([lab1(), lab1()], ["night/lab1.json", "night/lab2.json"], notes)
    assert len(merged) == 2 * len(lab1())
    assert {r.module["host"] for r in merged} == {"lab1", "lab2"}
    page = MatrixPage(render_html(merged))
    assert page.tables == 2 and len(md_tables(render_markdown(merged))) == 2
    assert "lab1 · PKCS#15 emulated" in render_markdown(merged)
    assert notes == [f"night/{h}.json: 8 cases without a host, tagged host {h!r}"
                     for h in ("lab1", "lab2")]


def test_merge_same_host_twice_keeps_the_later_and_says_so():
    later = [dataclasses.replace(r, module={**r.module, "host": "lab1"}, outcome="ok",
                                 expected=None, error=None) for r in lab1()]
    earlier = [dataclasses.replace(r, module={**r.module, "host": "lab1"}) for r in lab1()]
    notes: list[str] = []
    merged = merge([earlier, later], ["mon.json", "tue.json"], notes)
    assert len(merged) == len(later) and all(r.outcome == "ok" for r in merged)
    assert len(notes) == len(later)
    assert "keeping the one from tue.json" in notes[0]
    assert MatrixPage(render_html(merged)).tables == 1


def test_merge_same_stem_from_two_directories_keeps_both():
    merged = merge([lab1(), lab1()], ["a/results.json", "b/results.json"])
    assert {r.module["host"] for r in merged} == {"a/results", "b/results"}
    assert len(merged) == 2 * len(lab1())
    merged = merge([lab1(), lab1()], ["x/a/results.json", "y/a/results.json"])
    assert {r.module["host"] for r in merged} == {"a/results#1", "a/results#2"}
    # negative control: one file given twice is one host (its cases are duplicates)
    merged = merge([lab1(), lab1()], ["a/results.json", "a/results.json"])
    assert {r.module["host"] for r in merged} == {"results"}
    assert len(merged) == len(lab1())


def test_merge_keeps_host_already_present():
    tagged = [dataclasses.replace(r, module={**r.module, "host": "rack7"}) for r in lab1()]
    assert {r.module["host"] for r in merge([tagged], ["x.json"])} == {"rack7"}


def test_merge_main_writes_a_results_file(tmp_path, capsys):
    out = tmp_path / "all.json"
    assert merge_main([str(LAB1), str(REAL), "-o", str(out)]) == 0
    merged = load_results(out)
    assert Counter(r.module["host"] for r in merged) == {
        "lab1": len(lab1()), "softhsm-real": len(load_results(REAL))}
    assert "tagged host 'lab1'" in capsys.readouterr().err


# --- diff -----------------------------------------------------------------------------


def night_pair() -> tuple[list[HandshakeRecord], list[HandshakeRecord]]:
    old = lab1()
    new = [dataclasses.replace(r) for r in old]
    regress = by_id(new, "openssl-engine-p256-generate-tls13")
    regress.outcome, regress.error = "fail", "CKR_DEVICE_ERROR"
    regress.sign = {**(regress.sign or {}), "rv": "CKR_DEVICE_ERROR"}
    fixed = by_id(new, "java-p256-generate-tls12")
    fixed.outcome, fixed.error, fixed.sign = "ok", None, {**(fixed.sign or {}), "rv": "CKR_OK"}
    changed = by_id(new, "java-p256-generate-tls13")
    changed.sign = {**(changed.sign or {}), "mechanism": "CKM_ECDSA", "input_bytes": 32}
    new.remove(by_id(new, "java-rsa2048-generate-tls13"))
    new.append(dataclasses.replace(old[0], case_id="gnutls-p256-generate-tls12",
                                   client="gnutls"))
    return old, new


def test_diff_lists_regressions_first():
    result = diff(*night_pair())
    assert [(c.kind, c.key[3]) for c in result.changes] == [
        (ChangeKind.REGRESSION, "openssl-engine-p256-generate-tls13"),
        (ChangeKind.FIXED, "java-p256-generate-tls12"),
        (ChangeKind.CHANGED, "java-p256-generate-tls13"),
        (ChangeKind.NEW, "gnutls-p256-generate-tls12"),
        (ChangeKind.REMOVED, "java-rsa2048-generate-tls13"),
    ]
    assert result.has_regression
    assert result.changes[0].describe().startswith(
        "REGRESSION  /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so openssl-engine-p256-generate-tls13:"
        " ok ECDSA 32B -> CKR_DEVICE_ERROR ECDSA 32B")


def test_diff_of_a_run_with_itself_is_empty():
    result = diff(lab1(), lab1())
    assert result.changes == () and not result.has_regression
    assert result.unchanged == len(lab1())


def test_diff_keeps_hosts_apart():
    # the same case failing on another host is a new case there, not a regression
    old = merge([lab1()], ["lab1.json"])
    other_host = merge([[dataclasses.replace(r, outcome="fail") for r in lab1()]], ["lab2.json"])
    result = diff(old, old + other_host)
    assert not result.has_regression
    assert {c.kind for c in result.changes} == {ChangeKind.NEW}
    # negative control: the same breakage on the same host is a regression
    assert diff(old, [dataclasses.replace(r, outcome="fail") for r in old]).has_regression


def write(path: Path, records: list[HandshakeRecord]) -> Path:
    path.write_text(json.dumps([r.to_json() for r in records]))
    return path


def test_diff_main_exit_codes(tmp_path, capsys):
    old, new = night_pair()
    a, b = write(tmp_path / "old.json", old), write(tmp_path / "new.json", new)
    assert diff_main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert out.index("REGRESSION") < out.index("FIXED") < out.index("CHANGED") < out.index(
        "NEW") < out.index("REMOVED")
    # negative control: fixes, changes and new or removed cases alone exit 0
    regress = by_id(new, "openssl-engine-p256-generate-tls13")
    new[new.index(regress)] = by_id(old, regress.case_id)
    assert diff_main([str(a), str(write(tmp_path / "new.json", new))]) == 0
    assert "REGRESSION" not in capsys.readouterr().out


def test_ok_to_skip_is_not_a_regression(tmp_path):
    old = lab1()
    new = [dataclasses.replace(r, outcome="skip") if r.outcome == "ok" else r for r in old]
    assert diff_main([str(write(tmp_path / "a.json", old)),
                      str(write(tmp_path / "b.json", new))]) == 0


# --- the commands on bad input ----------------------------------------------------------

BAD_FILES = {
    "missing": None,
    "not-json": b"this is not json\n",
    "binary": bytes(range(256)),
    "empty": b"",
    "object": b'{"case_id": "x"}',
    "list-of-numbers": b"[1, 2]",
    "entry-without-fields": b'[{"case_id": "x"}]',
    "module-not-object": json.dumps([{**lab1()[0].to_json(), "module": "softhsm"}]).encode(),
    "error-not-text": json.dumps([{**lab1()[0].to_json(), "error": {"rv": 5}}]).encode(),
    "tls-a-number": json.dumps([{**lab1()[0].to_json(), "tls": 1.2}]).encode(),
}


@pytest.fixture(params=list(BAD_FILES), ids=list(BAD_FILES))
def bad_file(request, tmp_path) -> Path:
    path = tmp_path / f"{request.param}.json"
    if BAD_FILES[request.param] is not None:
        path.write_bytes(BAD_FILES[request.param])
    return path


@pytest.mark.parametrize("command", ["report", "merge", "diff"])
def test_bad_input_is_one_line_and_exit_2(command, bad_file, tmp_path, capsys):
    argv = {"report": [str(bad_file), "-o", str(tmp_path / "out")],
            "merge": [str(LAB1), str(bad_file), "-o", str(tmp_path / "all.json")],
            "diff": [str(LAB1), str(bad_file)]}[command]
    main = {"report": report_main, "merge": merge_main, "diff": diff_main}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"p11tls {command}: ") and bad_file.name in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "all.json").exists()


@pytest.mark.parametrize("command", ["report", "merge", "diff"])
def test_good_input_exits_0_quietly(command, tmp_path, capsys):
    # negative control for the bad-input cases
    argv = {"report": [str(REAL), "-o", str(tmp_path / "out")],
            "merge": [str(LAB1), "-o", str(tmp_path / "all.json")],
            "diff": [str(LAB1), str(LAB1)]}[command]
    main = {"report": report_main, "merge": merge_main, "diff": diff_main}[command]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and (err == "" or command == "merge")


def test_usage_error_exits_2(capsys):
    assert diff_main(["only-one.json"]) == 2
    assert "usage: p11tls diff" in capsys.readouterr().err


# --- writing the reports ----------------------------------------------------------------


def test_report_main_writes_next_to_the_results_by_default(tmp_path, capsys):
    results = tmp_path / "results.json"
    shutil.copy(LAB1, results)
    shutil.copytree(DATA / "logs", tmp_path / "logs")
    assert report_main([str(results)]) == 1  # lab1 has two unexpected failures
    html = (tmp_path / "matrix.html").read_text()
    assert "Signature Algorithm: ecdsa_secp256r1_sha256" in html  # relative logs found
    assert (tmp_path / "matrix.md").read_text().startswith("# PKCS#11 TLS")
    out, err = capsys.readouterr()
    assert "matrix.html" in out
    assert err == ("p11tls report: 2 cases failed: java-p256-generate-tls12, "
                   "java-rsa2048-import-tls13\n")


def test_write_reports_into_a_new_directory(tmp_path):
    html, md = write_reports(load_results(REAL), tmp_path / "a" / "b")
    assert html.is_file() and md.is_file()
    assert sorted(p.name for p in html.parent.iterdir()) == ["matrix.html", "matrix.md"]


def test_write_reports_into_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot write reports into"):
        write_reports(lab1(), blocker)


def test_empty_results_render():
    assert "No handshake cases were run" in render_html([])
    assert "No handshake cases were run" in render_markdown([])
    assert MatrixPage(render_html([])).tables == 0


def test_the_default_matrix_fits_1400_px_and_comes_first(tmp_path):
    from test_terminal import default_matrix  # every case of the default matrix

    text = render_html(default_matrix())
    assert text.index('<table class="matrix">') < text.index("Causes of the failures")
    assert text.index("Causes of the failures") < text.index("Expected failures")
    # fits: the matrix's own box does not scroll and no cell is squeezed below the
    # width the style gives it (6.6em of 11 px, + padding and border)
    fit = ("(() => { const box = document.querySelector('div.scroll'); const cells = "
           "[...document.querySelectorAll('table.matrix > tbody > tr > td')].map("
           "c => c.getBoundingClientRect().width); return box.scrollWidth + ' ' + "
           "box.clientWidth + ' ' + Math.min(...cells); })()")
    scroll, client, narrowest = in_browser(text, tmp_path, 1400, fit).split()
    assert int(scroll) <= int(client) and float(narrowest) >= 72.6, (scroll, client, narrowest)
    # control: at 1000 px the same measurement sees the cells squeezed
    scroll, client, narrowest = in_browser(text, tmp_path, 1000, fit).split()
    assert int(scroll) > int(client) or float(narrowest) < 72.6, (scroll, client, narrowest)
    # the table starts in the first screen (900 px), the causes below it
    top = "document.querySelector('%s').getBoundingClientRect().top"
    table, causes = in_browser(text, tmp_path, 1400, f"{top % 'table.matrix'} + ' ' + "
                               f"{top % 'section.causes'}").split()
    assert float(table) < 900 < float(causes)


def test_a_client_column_group_can_be_hidden_in_a_browser(tmp_path):
    text = render_html(load_results(REAL), log_base=DATA)
    shown = "getComputedStyle(document.querySelector('td.g1c0')).display"
    assert in_browser(text, tmp_path, 1400, shown) == "table-cell"  # control
    hidden = f"(document.getElementById('hide-g1c0').click(), {shown})"
    assert in_browser(text, tmp_path, 1400, hidden) == "none"
    other = "getComputedStyle(document.querySelector('td.g1c1')).display"
    assert in_browser(text, tmp_path, 1400, f"(document.getElementById('hide-g1c0').click(), "
                      f"{other})") == "table-cell"  # only that client's columns
