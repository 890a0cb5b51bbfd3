"""The transcript-size sweep and the padding behind it, on the session's
throw-away SoftHSM2 token (no emulation: no limit to find)."""

from __future__ import annotations

import subprocess
import sys

from cryptography import x509

from harness.keys import KEYS, Provisioning
from harness.matrix import Case
from harness.padding import names_size, padded_ca_file
from harness.sweep import sweep
from harness.tls import TLSVersion


def test_padding_file_adds_about_the_asked_bytes_of_names(tmp_path, p11_runner):
    ca = p11_runner.ca.ca_pem
    assert padded_ca_file(tmp_path, ca, 0) == ca  # negative control: no padding
    padded = padded_ca_file(tmp_path, ca, 4096)
    certs = x509.load_pem_x509_certificates(padded.read_bytes())
    assert certs[0].subject == x509.load_pem_x509_certificate(ca.read_bytes()).subject
    added = sum(names_size(c) for c in certs[1:])
    assert 4096 <= added < 4096 + names_size(certs[1])


def test_padding_grows_what_a_combined_mechanism_signs(p11_runner):
    sizes = []
    for padding in (0, 4096):
        record = p11_runner.run(Case("java", KEYS["rsa2048"], Provisioning.GENERATE,
                                     TLSVersion.TLS12, "rsa_pkcs1_sha256", padding))
        assert record.outcome == "ok", record.error
        assert record.sign["mechanism"] == "CKM_SHA256_RSA_PKCS"
        sizes.append(record.sign["input_bytes"])
    assert sizes[1] - sizes[0] >= 4096


def test_sweep_on_plain_softhsm_finds_no_limit(p11_runner):
    lines = []
    result = sweep(p11_runner.run, "java", "p256", [0, 2, 8], lines.append)
    assert result.first_failure is None
    assert result.largest_ok_input == 32  # CKM_ECDSA over a SHA-256 digest, whatever the size
    assert [s["padding_bytes"] for s in result.steps] == [0, 2048, 8192]
    assert "no limit found" in result.summary() and len(lines) == 3


def test_sweep_command_refuses_bad_steps():
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "--steps", "two"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--steps takes whole KiB numbers" in proc.stderr
    assert "Traceback" not in proc.stderr
