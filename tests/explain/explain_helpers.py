"""Helpers and constants the explain tests share (imported by name: conftest.py
puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.commands.explain import explain_main
from harness.explain.explanation import explain_file
from harness.installed import find_library

DATA = Path(__file__).parents[1] / "data" / "explain"
PIN = "8642"
WRONG_PIN = "975312"
LABEL = "explain"


def _first(candidates: tuple[str, ...], what: str) -> Path:
    found = find_library(*candidates)
    if found is None:
        pytest.skip(f"Requires {what}")
    return found


def rules_found(path: Path) -> list[str]:
    return [f.rule for f in explain_file(path).findings]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = explain_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err



def _pasted(tpm2_logs: dict[str, Path], tmp_path: Path, log: str, extra: str) -> Path:
    path = tmp_path / f"{log}-pasted.log"
    path.write_text(tpm2_logs[log].read_text() + "\n" + (DATA / extra).read_text())
    return path



# --- the harness's own records -------------------------------------------------------------


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sign_records(mechanism: str, value: int, parts: list[int], final_rv: str, update_rv="CKR_OK"):
    key = {"class": "CKO_PRIVATE_KEY", "key_type": "CKK_EC", "id": "01", "label": "p256"}
    recs = [
        {
            "fn": "C_Login",
            "seq": 1,
            "rv": "CKR_OK",
            "session": 1,
            "user_type": "CKU_USER",
            "pin_len": 4,
        },
        {
            "fn": "C_SignInit",
            "seq": 2,
            "rv": "CKR_OK",
            "session": 1,
            "key": key,
            "mechanism": {"name": mechanism, "value": value},
            "params": None,
        },
    ]
    for n, part in enumerate(parts):
        rv = update_rv if n == len(parts) - 1 else "CKR_OK"
        recs.append(
            {"fn": "C_SignUpdate", "seq": 3 + n, "rv": rv, "session": 1, "in_len": part, "us": 40}
        )
        if rv != "CKR_OK":
            return recs
    recs.append(
        {"fn": "C_SignFinal", "seq": 9, "rv": final_rv, "session": 1, "out_len": 0, "us": 900}
    )
    return recs


RECORDS = {
    # SoftHSM2's C_GetTokenInfo flags with no CKF_USER_PIN_* bit, then a good signature
    "token_flags_clean": [
        {"fn": "C_GetTokenInfo", "seq": 1, "rv": "CKR_OK", "token_flags": "0x42d"},
        *[{**r, "seq": n} for n, r in enumerate(
            sign_records("CKM_ECDSA", 0x1041, [32], "CKR_OK"), start=2)],
    ],
    # Java SunPKCS11 on a token advertising CKM_ECDSA_SHA256: TLS 1.2 transcript in parts
    "combined_tls12_fail": sign_records(
        "CKM_ECDSA_SHA256", 0x1044, [1024, 1024, 989], "CKR_DEVICE_ERROR"
    ),
    # the same failure with a TLS 1.3-sized input is something else
    "combined_tls13_fail": sign_records("CKM_ECDSA_SHA256", 0x1044, [146], "CKR_DEVICE_ERROR"),
    "multipart_refused": sign_records(
        "CKM_ECDSA_SHA256", 0x1044, [3037], "CKR_OK", update_rv="CKR_FUNCTION_NOT_SUPPORTED"
    ),
    "rsa_without_pss": [
        {
            "fn": "C_GetMechanismList",
            "rv": "CKR_OK",
            "mechanisms": ["CKM_RSA_PKCS", "CKM_SHA256_RSA_PKCS", "CKM_ECDSA"],
        },
        {
            "fn": "C_SignInit",
            "rv": "CKR_OK",
            "session": 2,
            "mechanism": {"name": "CKM_RSA_PKCS", "value": 1},
            "key": {"class": "CKO_PRIVATE_KEY", "key_type": "CKK_RSA", "label": "rsa2048"},
        },
        {"fn": "C_Sign", "rv": "CKR_OK", "session": 2, "in_len": 51, "out_len": 256},
    ],
    "rsa_with_pss": [
        {
            "fn": "C_GetMechanismList",
            "rv": "CKR_OK",
            "mechanisms": ["CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS", "CKM_ECDSA"],
        },
        {
            "fn": "C_SignInit",
            "rv": "CKR_OK",
            "session": 2,
            "mechanism": {"name": "CKM_RSA_PKCS_PSS", "value": 13},
            "key": {"class": "CKO_PRIVATE_KEY", "key_type": "CKK_RSA", "label": "rsa2048"},
        },
        {"fn": "C_Sign", "rv": "CKR_OK", "session": 2, "in_len": 32, "out_len": 256},
    ],
    "ecdsa_p256_sha384": [
        {
            "fn": "C_SignInit",
            "rv": "CKR_OK",
            "session": 1,
            "mechanism": {"name": "CKM_ECDSA", "value": 4161},
            "key": {"class": "CKO_PRIVATE_KEY", "key_type": "CKK_EC", "curve": "P-256"},
        },
        {"fn": "C_Sign", "rv": "CKR_OK", "session": 1, "in_len": 48, "out_len": 64},
    ],
    "ecdsa_p384_sha384": [
        {
            "fn": "C_SignInit",
            "rv": "CKR_OK",
            "session": 1,
            "mechanism": {"name": "CKM_ECDSA", "value": 4161},
            "key": {"class": "CKO_PRIVATE_KEY", "key_type": "CKK_EC", "curve": "P-384"},
        },
        {"fn": "C_Sign", "rv": "CKR_OK", "session": 1, "in_len": 48, "out_len": 96},
    ],
}



HELDOUT = DATA / "heldout"
