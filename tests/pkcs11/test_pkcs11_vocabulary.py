"""The one PKCS#11 vocabulary (harness/pkcs11/): the C interposer's name
tables are generated from it, its values agree with the system's pkcs11.h and
python-pkcs11, and every mechanism name the harness writes anywhere (the Java
client's disabledMechanisms, the profiles, the explain rules) is in it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pkcs11
import pytest

from harness import pkcs11 as vocab
from harness.interposer import (
    INTERPOSER_SOURCE,
    _find_pkcs11_include,
    build_interposer,
    write_names_header,
)
from harness.pkcs11.c_header import C_TABLES, header_text
from harness.token.provision import ckr_name

ROOT = Path(__file__).resolve().parents[2]
# A mechanism name, not a prefix in a regular expression or a glob (^CKM_SHA…, CKM_SHA*)
NAME = re.compile(r"(?<![\^\w])CKM_[A-Z0-9_]*[A-Z0-9](?![\w*?(\\{])")


def _cc() -> str:
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        pytest.skip(f"Requires a C compiler ({cc})")
    return cc


def test_interposer_has_no_hand_written_name_tables() -> None:
    source = INTERPOSER_SOURCE.read_text()
    assert '#include "p11tls_names.h"' in source
    for array in C_TABLES:
        assert not re.search(rf"\b{array}\[\]\s*=", source), f"{array} is written by hand"
    # Control: the pattern does find a table written the old way.
    assert re.search(r"\bmech_names\[\]\s*=", "static const struct name mech_names[] = {")


def test_built_interposer_carries_every_vocabulary_name(tmp_path: Path) -> None:
    _cc()
    module = build_interposer(cache=tmp_path).read_bytes()
    for array, table in C_TABLES.items():
        for name in table.values:
            assert name.encode() + b"\0" in module, f"{name} ({array}) not in the interposer"
    # CKM_ECDSA_SHA3_256: the name the old hand-written table lacked.
    assert b"CKM_ECDSA_SHA3_256\0" in module
    assert b"CKM_NO_SUCH_MECHANISM\0" not in module  # control


def test_generated_header_is_part_of_the_build_key(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _cc()
    first = build_interposer(cache=tmp_path)
    import harness.interposer as interposer

    monkeypatch.setattr(interposer, "header_text", lambda: header_text() + "/* changed */\n")
    second = build_interposer(cache=tmp_path)
    assert second != first and second.is_file()
    monkeypatch.undo()
    assert build_interposer(cache=tmp_path) == first  # control: same vocabulary, same build


def _agreement_program(header_dir: Path) -> str:
    checks = []
    for array, table in C_TABLES.items():
        for value, name in table.entries():
            checks.append(
                f"#ifdef {name}\n_Static_assert({name} == 0x{value:x}UL, \"{name} ({array})\");\n"
                "#endif\n"
            )
    return ('#include <p11-kit/pkcs11.h>\nstruct name { CK_ULONG v; const char *n; };\n'
            '#include "p11tls_names.h"\n' + "".join(checks) + "int main(void) { return 0; }\n")


def test_vocabulary_values_agree_with_pkcs11_h(tmp_path: Path) -> None:
    cc = _cc()
    write_names_header(tmp_path)
    program = tmp_path / "agree.c"
    program.write_text(_agreement_program(tmp_path))
    argv = [cc, "-fsyntax-only", "-Wall", f"-I{tmp_path}", f"-I{_find_pkcs11_include()}"]
    proc = subprocess.run([*argv, str(program)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Control: a wrong value is caught by the same check.
    wrong = tmp_path / "wrong.c"
    wrong.write_text(program.read_text().replace(
        "_Static_assert(CKM_ECDSA == 0x1041UL", "_Static_assert(CKM_ECDSA == 0x1042UL"))
    proc = subprocess.run([*argv, str(wrong)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0 and "CKM_ECDSA" in proc.stderr


def test_vocabulary_follows_python_pkcs11() -> None:
    for member in pkcs11.Mechanism:
        name = "CKM_" + member.name.lstrip("_")
        if member.name.startswith("_") and member.name.lstrip("_") in pkcs11.Mechanism.__members__:
            continue
        assert vocab.MECHANISMS.value(name) == member.value or name == "CKM_VENDOR_DEFINED"
    assert vocab.ATTRIBUTES.value("CKA_EC_PARAMS") == pkcs11.Attribute.EC_PARAMS
    assert vocab.KEY_TYPES.name(pkcs11.KeyType.EC_EDWARDS) == "CKK_EC_EDWARDS"
    assert vocab.MGFS.name(pkcs11.MGF.SHA256) == "CKG_MGF1_SHA256"
    # python-pkcs11's stale `_AES_KEY_WRAP` (0x1090) does not take the spec name.
    assert vocab.MECHANISMS.value("CKM_AES_KEY_WRAP") == 0x2109


@pytest.mark.parametrize(("raw", "name"), [
    (0x1048, "CKM_ECDSA_SHA3_256"), ("0x00001048", "CKM_ECDSA_SHA3_256"),
    ("CKM_0x00001041", "CKM_ECDSA"), ("CKM_ECDSA_KEY_PAIR_GEN", "CKM_EC_KEY_PAIR_GEN"),
    (0x7FFF1234, "0x7fff1234"),
])
def test_mechanism_spellings(raw: str | int, name: str) -> None:
    assert vocab.mechanism_name(raw) == name


def test_ckr_name_uses_the_vocabulary() -> None:
    assert ckr_name(pkcs11.exceptions.PinIncorrect()) == "CKR_PIN_INCORRECT"
    assert ckr_name(pkcs11.exceptions.DataLenRange()) == "CKR_DATA_LEN_RANGE"
    assert ckr_name(pkcs11.exceptions.TokenNotRecognised()) == "CKR_TOKEN_NOT_RECOGNIZED"
    assert ckr_name(ValueError("x")) == "CKR_? (ValueError)"  # control


def _names_in(paths: list[Path]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        for name in NAME.findall(path.read_text()):
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def _unknown(found: dict[str, list[str]]) -> dict[str, list[str]]:
    return {n: where for n, where in found.items() if vocab.MECHANISMS.value(n) is None}


def test_every_mechanism_name_used_exists() -> None:
    java = sorted((ROOT / "harness" / "clients").rglob("*.py"))
    java += sorted((ROOT / "java").glob("*.java"))
    profiles = sorted((ROOT / "harness" / "profiles").glob("*.toml"))
    rules = sorted((ROOT / "harness" / "explain").glob("*.py"))
    outcomes = sorted((ROOT / "harness" / "data").rglob("*.toml"))
    found = _names_in(java + profiles + rules + outcomes)
    assert "CKM_ECDSA_SHA3_256" in found  # the Java client disables it by name
    assert len(found) > 20
    assert _unknown(found) == {}
    # Control: a misspelt name is caught.
    assert _unknown({"CKM_ECDSA_SHA265": ["x"]}) == {"CKM_ECDSA_SHA265": ["x"]}
