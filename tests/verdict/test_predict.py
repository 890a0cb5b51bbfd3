"""Predictions per matrix cell (harness/verdict/predict.py) against real matrix runs:
on the embedded default and under every shipped profile, `p11tls doctor`
(reading a spare SoftHSM2 token as the profile makes it look) and the runner's
own prediction in each record must match at least 95 % of the cells; the
prediction made for another profile's token matches clearly less. One matrix
run per profile (default key set, every installed client) serves every check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.interposer.profile import load_profile, shipped_profiles
from harness.matrix.record import HandshakeRecord
from harness.reports.layout import cell_text
from harness.reports.markdown import render_markdown
from harness.verdict.predict import (
    MEASURED_TOKEN,
    TLS12_TRANSCRIPT,
    TokenFacts,
    agreement,
    predict,
)

ROOT = Path(__file__).parents[2]
DEFAULT = "default"
# where the openvpn column's behaviour is recorded (data/outcomes/); elsewhere it
# adds ~13 s a run (its server accepts once a second) and nothing new to check
OPENVPN_PROFILES = (DEFAULT, "picohsm-opensc", "combined-pss-only")
PROFILES = [DEFAULT, *sorted(p.name for p in shipped_profiles())]
# The negative control: a profile whose token differs from the run's where the
# default key set shows it (picohsm and nitrokey-hsm, default and slow-card
# look alike there).
WRONG = {DEFAULT: "openpgp-card", "combined-pss-only": "nitrokey-start-opensc",
         "nitrokey-hsm-opensc": "combined-pss-only", "nitrokey-start-opensc": "picohsm-opensc",
         "openpgp-card": "picohsm-opensc", "picohsm-opensc": "openpgp-card",
         "slow-card": "nitrokey-start-opensc"}
DEBIAN12 = {"openssl": "3.0.19", "libp11": "0.4.12", "gnutls": "3.7.9", "java": "17.0.15",
            "nss": "3.87.1", "curl": "7.88.1", "softhsm": "2.6.1"}
# the components each client's facts are keyed to (harness.clients' components())
PARTS = {"openssl-engine": ("openssl", "libp11"), "gnutls": ("gnutls",), "java": ("java",),
         "java-nocombined": ("java",), "nss": ("nss",), "curl": ("curl", "openssl", "libp11")}


def versions(client: str, **override: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {p: DEBIAN12[p] for p in PARTS[client]}
    return {**found, "softhsm": "2.6.1", **override}


# -- the rules and facts, no token ------------------------------------------------------


def test_the_measured_token_gets_the_measured_facts():
    token = TokenFacts(MEASURED_TOKEN)
    p384 = predict("gnutls", "p384", "1.2", token, versions("gnutls"))
    assert (p384.mechanism, p384.bytes_min, p384.outcome) == ("CKM_ECDSA", 32, "ok")
    assert p384.source == "expected_mechanisms.toml"
    java = predict("java", "rsa2048", "1.2", token, versions("java"), sigalgs="rsa_pkcs1_sha256")
    assert java.mechanism == "CKM_SHA256_RSA_PKCS"
    assert (java.bytes_min, java.bytes_max) == TLS12_TRANSCRIPT
    nocombined = predict("java-nocombined", "rsa2048", "1.2", token, versions("java-nocombined"),
                         sigalgs="rsa_pkcs1_sha256")
    assert (nocombined.mechanism, nocombined.bytes_min) == ("CKM_RSA_PKCS", 51)
    # a known failure of the stack holds whatever the token offers
    ed = predict("java", "ed25519", "1.3", token, versions("java"))
    assert ed.outcome == "fail" and "EdDSA" in ed.why
    # on versions nothing was measured on, the rules alone say the same
    unmeasured = predict("gnutls", "p384", "1.2", token, versions("gnutls", gnutls="9.9"))
    assert unmeasured.source == "rule" and unmeasured.mechanism == "CKM_ECDSA"


def test_what_the_token_lacks_or_adds_changes_the_prediction():
    no_pss = TokenFacts(MEASURED_TOKEN - {"CKM_RSA_PKCS_PSS"})
    gnutls13 = predict("gnutls", "rsa2048", "1.3", no_pss, versions("gnutls"))
    assert gnutls13.outcome == "fail" and gnutls13.mechanism is None
    gnutls12 = predict("gnutls", "rsa2048", "1.2", no_pss, versions("gnutls"))
    assert (gnutls12.mechanism, gnutls12.bytes_min, gnutls12.outcome) == ("CKM_RSA_PKCS", 51, "ok")
    engine = predict("openssl-engine", "rsa2048", "1.3", no_pss, versions("openssl-engine"))
    assert (engine.mechanism, engine.bytes_min, engine.outcome) == ("CKM_RSA_X_509", 256, "ok")
    no_raw = TokenFacts(no_pss.mechanisms - {"CKM_RSA_X_509"})
    engine = predict("openssl-engine", "rsa2048", "1.2", no_raw, versions("openssl-engine"))
    assert (engine.mechanism, engine.outcome) == ("CKM_RSA_X_509", "fail")
    combined = MEASURED_TOKEN | {"CKM_ECDSA_SHA256"}
    java = predict("java", "p256", "1.2", TokenFacts(combined), versions("java"))
    assert java.mechanism == "CKM_ECDSA_SHA256" and java.outcome == "ok"
    assert (java.bytes_min, java.bytes_max) == TLS12_TRANSCRIPT
    capped = TokenFacts(frozenset(combined), max_input_bytes=1222)
    assert predict("java", "p256", "1.2", capped, versions("java")).outcome == "fail"
    assert predict("java", "p256", "1.3", capped, versions("java")).outcome == "ok"
    roomy = TokenFacts(frozenset(combined), max_input_bytes=8192)
    assert predict("java", "p256", "1.2", roomy, versions("java")).outcome == "ok"
    refusing = TokenFacts.of(MEASURED_TOKEN, load_profile("nitrokey-start-opensc"))
    imported = predict("gnutls", "p256", "1.2", refusing, versions("gnutls"),
                       provisioning="import")
    assert imported.outcome == "fail" and imported.error == "provisioning: CKR_GENERAL_ERROR"
    assert predict("gnutls", "rsa2048", "1.2", refusing, versions("gnutls"),
                   provisioning="import").outcome == "ok"


def test_a_record_matches_within_the_transcripts_variation():
    cell = predict("java", "rsa2048", "1.2", TokenFacts(MEASURED_TOKEN), versions("java"),
                   sigalgs="rsa_pkcs1_sha256")
    record = {"outcome": "ok", "sign": {"mechanism": "CKM_SHA256_RSA_PKCS", "input_bytes": 2299}}
    assert cell.matches(record) is True
    assert cell.matches({**record, "sign": {**record["sign"], "input_bytes": 51}}) is False
    assert cell.matches({**record, "sign": {"mechanism": "CKM_RSA_PKCS",
                                            "input_bytes": 2299}}) is False
    assert cell.matches({**record, "outcome": "fail"}) is False
    assert cell.matches({"outcome": "skip"}) is None


def test_reports_mark_a_cell_that_was_not_as_predicted():
    def record(matched: bool) -> HandshakeRecord:
        return HandshakeRecord(
            case_id="gnutls-p256-generate-tls12", client="gnutls", key="p256",
            provisioning="generate", tls="1.2", outcome="ok", verdict="passed",
            sign={"mechanism": "CKM_ECDSA", "input_bytes": 32}, prediction_matched=matched,
            predicted={"outcome": "fail", "mechanism": "CKM_ECDSA_SHA256", "bytes_min": 1500,
                       "bytes_max": 3000, "why": "because"})
    assert cell_text(record(False)).endswith("!=predicted")
    assert "predicted fail ECDSA_SHA256 1500-3000B (because)" in render_markdown([record(False)])
    assert "predicted" not in cell_text(record(True))
    assert "predicted" not in render_markdown([record(True)])


# -- doctor and the runner against real matrix runs ---------------------------------------


def one_jdk() -> list[str]:
    """`--java HOME` of the default JDK only, when there is one."""
    from harness.clients.java import find_jdk
    from harness.errors import HarnessError

    try:
        return ["--java", str(find_jdk(None).home)]
    except HarnessError:
        return []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """profile -> (records, terminal output) of one matrix run, made on first use."""
    made: dict[str, tuple[list[dict], str]] = {}

    def run(profile: str) -> tuple[list[dict], str]:
        if profile not in made:
            where = tmp_path_factory.mktemp(f"matrix-{profile}")
            extra = [] if profile == DEFAULT else ["--p11-profile", profile]
            extra += one_jdk()  # further JDKs would repeat the java columns: time, not cover
            if profile not in OPENVPN_PROFILES:
                extra += ["-m", "not openvpn"]
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 str(ROOT / "tests" / "test_matrix.py"), "--p11-reports", str(where / "reports"),
                 "--basetemp", str(where / "tmp"), *extra],
                capture_output=True, text=True, timeout=900, check=False, cwd=ROOT)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
            records = json.loads((where / "reports" / "results.json").read_text())["cases"]
            made[profile] = (records, proc.stdout)
        return made[profile]

    return run


@pytest.fixture(scope="module")
def doctor(tmp_path_factory):
    """profile -> doctor's cell predictions for a spare SoftHSM2 token read as
    the profile makes it look, made on first use."""
    from harness.token.softhsm import TemporarySoftHSM

    store = TemporarySoftHSM(tmp_path_factory.mktemp("doctor") / "softhsm")
    store.init_token("spare", "4711")
    made: dict[str, dict] = {}

    def cells(profile: str) -> dict:
        if profile not in made:
            extra = [] if profile == DEFAULT else ["--p11-profile", profile]
            proc = subprocess.run(
                [sys.executable, "-m", "harness.cli", "doctor", "--p11-module",
                 str(store.module), "--p11-token-label", "spare", "--json", *extra],
                capture_output=True, text=True, timeout=300, check=False,
                env={**os.environ, **store.env})
            assert proc.returncode == 0, proc.stderr
            from harness.verdict.predict import Prediction

            token = json.loads(proc.stdout)["tokens"][0]
            made[profile] = {c["case_id"]: Prediction(**{k: v for k, v in c.items()
                                                         if k != "case_id"})
                             for c in token["cells"]}
        return made[profile]

    yield cells
    store.remove()


@pytest.mark.parametrize("profile", PROFILES)
def test_doctor_predicts_the_matrix(runs, doctor, profile):
    records, output = runs(profile)
    ran = [r for r in records if r["outcome"] in ("ok", "fail")]
    assert len(ran) >= 40, f"too few cells ran under {profile}: {len(ran)}"
    # the runner's own prediction in every record, and its summary line
    compared = [r for r in records if r["prediction_matched"] is not None]
    matched = sum(r["prediction_matched"] for r in compared)
    assert len(compared) == len(ran) and matched >= 0.95 * len(compared), [
        (r["case_id"], r["predicted"]) for r in compared if not r["prediction_matched"]]
    # the count covers every cell; the skipped ones are said apart
    skipped = sum(r["outcome"] == "skip" for r in records)
    line = f"prediction (p11tls doctor): {matched} of {len(records)} cells as predicted"
    assert line in output and (not skipped or f"; {skipped} skipped" in output), output
    # doctor, on another token of the same module, read as the profile makes it look
    hits, total = agreement(doctor(profile), records)
    assert total == len(ran) and hits >= 0.95 * total, (profile, hits, total)
    # negative control: the prediction for another profile's token
    wrong, total = agreement(doctor(WRONG[profile]), records)
    assert wrong <= hits - 0.10 * total, (profile, WRONG[profile], wrong, hits, total)


def test_java_config_that_disables_a_mechanism_changes_javas_prediction():
    token = TokenFacts(MEASURED_TOKEN)
    config = ["disabledMechanisms = { CKM_SHA256_RSA_PKCS }"]
    java = predict("java", "rsa2048", "1.2", token.seen_by("java", config), versions("java"),
                   sigalgs="rsa_pkcs1_sha256")
    assert (java.mechanism, java.bytes_min) == ("CKM_RSA_PKCS", 51)
    assert token.seen_by("gnutls", config) is token  # only SunPKCS11 reads that line


def test_what_the_token_does_not_advertise_is_unknown_until_measured():
    from harness.token.measurements import Measurement
    from harness.verdict.predict import TokenFacts, predict

    mechanisms = {"CKM_ECDSA", "CKM_ECDSA_SHA256", "CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS"}
    card = TokenFacts.of(mechanisms, manufacturer="Pol Henarejos")
    seed = predict("java", "p256", "1.2", card, {})
    assert seed.outcome == "unknown" and "measure with p11tls token-sweep" in seed.why
    assert seed.differences({"outcome": "fail", "sign": {}}) is None  # not compared
    hashed = predict("gnutls", "p256", "1.2", card, {})
    assert hashed.outcome == "ok"  # a host-made digest: no input limit in play
    imported = predict("gnutls", "p256", "1.2", card, {}, provisioning="import")
    assert imported.outcome == "unknown" and "CKK_EC" in imported.why
    measured = TokenFacts.of(mechanisms, measurement=Measurement(
        "1", "6.6", limits={"CKM_ECDSA_SHA256": {"largest_ok": 2029, "smallest_refused": 2030,
                                                 "refused_rv": "CKR_GENERAL_ERROR"}},
        imports={"CKK_EC": "CKR_FUNCTION_NOT_SUPPORTED"}))
    seed = predict("java", "p256", "1.2", measured, {})
    assert (seed.outcome, seed.error) == ("fail", "CKR_GENERAL_ERROR")
    assert predict("java", "p256", "1.3", measured, {}).outcome == "ok"
    refused = predict("gnutls", "p256", "1.2", measured, {}, provisioning="import")
    assert refused.outcome == "fail" and "CKR_FUNCTION_NOT_SUPPORTED" in str(refused.error)
    # a software token and a write-protected one are known without measuring
    assert predict("java", "p256", "1.2", TokenFacts.of(
        mechanisms, manufacturer="SoftHSM project"), {}).outcome == "ok"
    locked = TokenFacts.of(mechanisms, manufacturer="x", write_protected=True)
    assert "CKR_TOKEN_WRITE_PROTECTED" in str(
        predict("gnutls", "p256", "1.2", locked, {}, provisioning="import").error)


def test_the_count_covers_every_cell_and_says_the_skipped_apart():
    from types import SimpleNamespace

    from harness.verdict.predict import prediction_summary

    def rec(case, outcome, matched, predicted="ok"):
        return SimpleNamespace(case_id=case, outcome=outcome, prediction_matched=matched,
                               predicted={"outcome": predicted})

    line = prediction_summary([rec("a", "ok", True), rec("b", "fail", False),
                               rec("c", "skip", None), rec("d", "fail", None, "unknown")])
    assert line is not None and line.startswith(
        "prediction (p11tls doctor): 1 of 4 cells as predicted; 1 not as predicted: b")
    assert "; 1 skipped" in line and "1 depend on what the token does not advertise" in line
