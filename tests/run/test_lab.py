"""Named lab modules (`--p11-lab NAME`, harness/run/lab.py): the lab file's checks,
where the file and the PIN come from, and the shipped entries that can run
here (softhsm2 on a SoftHSM2 token of its own, tpm2-pkcs11 on swtpm), end to end
through `p11tls run` in child processes."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.run.config import resolve
from harness.run.lab import LabModuleMissing, find_lab_file, lab_options, load_lab
from harness.token.softhsm import TemporarySoftHSM

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "docs" / "lab" / "p11tls.toml"
GOOD = """
[lab.card]
module = "softhsm/libsofthsm2.so"
token_label = "p11tls-lab"
pin_env = "LAB_PIN"
mode = "read-only"
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_shipped_lab_file_is_valid_and_names_every_documented_module():
    entries = load_lab(SHIPPED)
    assert set(entries) == {"softhsm2", "tpm2-pkcs11", "opensc-card", "ykcs11", "yubihsm",
                            "sc-hsm-embedded"}
    assert entries["tpm2-pkcs11"].named and entries["tpm2-pkcs11"].mode == "provision"
    assert entries["softhsm2"].mode == "read-only" and entries["softhsm2"].pin_env
    assert all(e.install for e in entries.values())  # every skip line says what to install
    text = SHIPPED.read_text()
    for name in entries:  # each entry says whether it was verified here
        block = text.split(f"[lab.{name}]")[0].rsplit("\n\n", 1)[-1]
        assert block.startswith(("# VERIFIED (tests/run/test_lab.py)", "# UNVERIFIED here")), name
    verified = [n for n in entries if "# VERIFIED (tests/run/test_lab.py)" in
                text.split(f"[lab.{n}]")[0].rsplit("\n\n", 1)[-1]]
    assert verified == ["softhsm2", "tpm2-pkcs11"]  # the two this machine can run
    tox = (ROOT / "tox.ini").read_text()
    assert all(name in tox.split("[testenv:{")[1].split("}")[0].split(",") for name in entries)


@pytest.mark.parametrize(("entry", "key", "words"), [
    ('bogus = "x"', "lab.card.bogus", "unknown key"),
    ('pin = "1234"', "lab.card.pin", "never written"),
    ('keys = "p256,p999"', "lab.card.keys", "p999"),
    ('clients = []', "lab.card.clients", "list of names"),
    ('token_serial = "1234"', "lab.card.token_label", "one of them"),
    ('pin_file = "pin.txt"', "lab.card.pin_env", "one of them"),
])
def test_a_bad_entry_is_one_line_naming_file_and_key(tmp_path, entry, key, words):
    path = write(tmp_path / "p11tls.toml", GOOD + entry + "\n")
    with pytest.raises(ConfigError) as caught:
        load_lab(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}:") and words in message
    assert "\n" not in message


@pytest.mark.parametrize(("text", "key", "words"), [
    (GOOD.replace('"read-only"', '"rw"'), "lab.card.mode", "'read-only' or 'provision'"),
    (GOOD.replace('mode = "read-only"\n', ""), "lab.card.mode", "missing"),
    (GOOD.replace('module = "softhsm/libsofthsm2.so"\n', ""), "lab.card.module", "missing"),
    ('[lab.t]\nmodule = "tpm2"\ntoken_label = "x"\n', "lab.t.token_label", "named module"),
    ('[lab.t]\nmodule = "tpm2"\nmode = "read-only"\n', "lab.t.mode", "empty token"),
    ("[labs.card]\n", "labs", "unknown key"),
    ('[lab."a b"]\nmodule = "x"\n', "lab.a b", "letters, digits"),
    ("[lab.card\n", "", "not valid TOML"),
])
def test_bad_values_and_shapes(tmp_path, text, key, words):
    path = write(tmp_path / "p11tls.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_lab(path)
    assert str(caught.value).startswith(f"{path}: {key}") and words in str(caught.value)


def test_the_lab_file_is_found_env_first_then_p11tls_toml_then_pyproject(tmp_path):
    with pytest.raises(ConfigError, match="needs a lab file"):
        find_lab_file(tmp_path, {})
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n")
    with pytest.raises(ConfigError, match="needs a lab file"):  # no [tool.p11tls]: not one
        find_lab_file(tmp_path, {})
    write(tmp_path / "pyproject.toml", "[tool.p11tls.lab.card]\nmodule = 'x'\nbogus = 1\n")
    assert find_lab_file(tmp_path, {}) == (tmp_path / "pyproject.toml", "tool.p11tls.")
    with pytest.raises(ConfigError, match=r"pyproject.toml: tool.p11tls.lab.card.bogus"):
        load_lab(*find_lab_file(tmp_path, {}))
    write(tmp_path / "p11tls.toml", GOOD)
    assert find_lab_file(tmp_path, {})[0] == tmp_path / "p11tls.toml"
    other = write(tmp_path / "other.toml", GOOD)
    assert find_lab_file(tmp_path, {"P11TLS_LAB_FILE": "other.toml"})[0] == other
    with pytest.raises(ConfigError, match="no such file"):
        find_lab_file(tmp_path, {"P11TLS_LAB_FILE": "missing.toml"})


def test_the_entry_fills_module_token_pin_and_mode_and_the_command_line_wins(tmp_path):
    write(tmp_path / "p11tls.toml", GOOD + 'keys = ["p256"]\nprofile = "slow-card"\n')
    settings = resolve({"p11_lab": "card", "p11_clients": "gnutls"}, {},
                       {"LAB_PIN": "4711", "PKCS11_MODULE": "/nonexistent.so",
                        "P11TLS_KEYS": "rsa2048"}, base=tmp_path)
    assert settings.module is not None and settings.module.name == "libsofthsm2.so"
    assert (settings.token_label, settings.pin, settings.existing) == ("p11tls-lab", "4711", True)
    assert [k.name for k in settings.keys] == ["p256"]  # the entry beats P11TLS_KEYS
    assert settings.clients == ("gnutls",) and settings.profile == "slow-card"
    with pytest.raises(ConfigError, match="drop --p11-module"):
        resolve({"p11_lab": "card", "p11_module": "/x.so"}, {}, {"LAB_PIN": "1"},
                base=tmp_path)
    with pytest.raises(ConfigError, match="PIN variable LAB_PIN is not set"):
        resolve({"p11_lab": "card"}, {}, {}, base=tmp_path)
    with pytest.raises(ConfigError, match="no such entry .* choose from card"):
        resolve({"p11_lab": "cart"}, {}, {"LAB_PIN": "1"}, base=tmp_path)
    provision = resolve({"p11_lab": "card"}, {}, {"LAB_PIN": "1"}, base=tmp_path)
    write(tmp_path / "p11tls.toml", GOOD.replace("read-only", "provision"))
    assert provision.existing and not resolve({"p11_lab": "card"}, {}, {"LAB_PIN": "1"},
                                              base=tmp_path).existing


def test_the_pin_file_must_be_private_and_is_never_in_the_error(tmp_path):
    write(tmp_path / "p11tls.toml", GOOD.replace('pin_env = "LAB_PIN"', 'pin_file = "pin"'))
    pin = write(tmp_path / "pin", "271828\n")
    pin.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        lab_options("card", {}, {}, {}, tmp_path)
    assert "chmod 600" in str(caught.value) and "271828" not in str(caught.value)
    pin.chmod(0o600)
    assert lab_options("card", {}, {}, {}, tmp_path)["p11_pin"] == "271828"
    pin.unlink()
    with pytest.raises(ConfigError, match="No such file"):
        lab_options("card", {}, {}, {}, tmp_path)


@pytest.mark.parametrize("kind", ["fifo", "latin-1", "lab-file-latin-1"])
def test_a_fifo_or_foreign_pin_or_lab_file_is_one_line(tmp_path, kind):
    """Issue 23 rows 6 and 7: a FIFO PIN file blocked forever; a PIN or lab
    file not in UTF-8 was a traceback."""
    import os

    write(tmp_path / "p11tls.toml", GOOD.replace('pin_env = "LAB_PIN"', 'pin_file = "pin"'))
    pin = tmp_path / "pin"
    if kind == "fifo":
        os.mkfifo(pin, 0o600)
    else:
        pin.write_bytes("caf\xe9\n".encode("latin-1"))
        pin.chmod(0o600)
    if kind == "lab-file-latin-1":
        (tmp_path / "p11tls.toml").write_bytes(
            (GOOD + '# caf\xe9\n').encode("latin-1"))
    with pytest.raises(ConfigError, match="not a regular file|not UTF-8") as caught:
        lab_options("card", {}, {}, {}, tmp_path)
    assert "\n" not in str(caught.value)


def test_a_library_name_is_found_in_the_module_folders(tmp_path):
    """Issue 23 row 14: `module = "libsofthsm2.so"` (a library name, as the
    README allows) was "not installed" and the run tested nothing."""
    from harness.installed import SOFTHSM, find_library

    installed = find_library(*SOFTHSM)
    if installed is None:
        pytest.skip("Requires SoftHSM2 (package softhsm2)")
    write(tmp_path / "p11tls.toml", GOOD.replace("softhsm/libsofthsm2.so", "libsofthsm2.so"))
    assert lab_options("card", {}, {}, {"LAB_PIN": "1"}, tmp_path)["p11_module"] == str(
        installed)


def test_a_module_not_installed_is_missing_with_what_to_install(tmp_path):
    write(tmp_path / "p11tls.toml", GOOD.replace("softhsm/libsofthsm2.so", "libp11tls-none.so")
          + 'install = "apt-get install p11tls-none"\n')
    with pytest.raises(LabModuleMissing, match="libp11tls-none.so is not installed.*"
                                               "apt-get install p11tls-none"):
        lab_options("card", {}, {}, {"LAB_PIN": "1"}, tmp_path)
    write(tmp_path / "p11tls.toml", GOOD.replace("softhsm/libsofthsm2.so", "./here.so"))
    with pytest.raises(LabModuleMissing, match="here.so is not installed"):
        lab_options("card", {}, {}, {"LAB_PIN": "1"}, tmp_path)
    (tmp_path / "here.so").write_bytes(b"")  # present: resolved relative to the lab file
    assert lab_options("card", {}, {}, {"LAB_PIN": "1"}, tmp_path)["p11_module"] == str(
        tmp_path / "here.so")


# --- end to end, real tokens, through `p11tls run` in a child process ---------------


def p11tls(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture
def lab_token(tmp_path):
    """A SoftHSM2 store of its own with the token the shipped softhsm2 entry names."""
    store = TemporarySoftHSM(tmp_path / "softhsm")
    token = store.init_token("p11tls-lab", "lab-" + secrets.token_hex(4))
    env = {**os.environ, **store.env, "P11TLS_STATE_DIR": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "P11TLS_LAB_FILE": str(SHIPPED)}
    for name in ("PKCS11_MODULE", "PKCS11_TOKEN_LABEL", "PKCS11_TOKEN_PIN", "P11TLS_LAB"):
        env.pop(name, None)
    return store, token, env


def test_shipped_softhsm2_entry_runs_read_only_on_provisioned_keys(lab_token, tmp_path):
    store, token, env = lab_token
    made = p11tls("provision", "--p11-module", str(store.module), "--p11-token-label",
                  token.label, "--p11-keys", "p256", "--lab-ca-cert",
                  str(tmp_path / "lab-ca.pem"), env={**env, "PKCS11_TOKEN_PIN": token.pin},
                  cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    wrong = p11tls("run", "--p11-lab", "softhsm2", "--p11-clients", "gnutls",
                   "--p11-reports", "wrong", env={**env, "P11TLS_LAB_SOFTHSM2_PIN": "0000"},
                   cwd=tmp_path)
    assert wrong.returncode != 0 and "refused the PIN" in wrong.stderr
    assert not (tmp_path / "wrong" / "results.json").exists()
    ran = p11tls("run", "--p11-lab", "softhsm2", "--p11-clients", "gnutls",
                 "--p11-reports", "reports", env={**env, "P11TLS_LAB_SOFTHSM2_PIN": token.pin},
                 cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr
    assert "the run wrote nothing" in ran.stdout and token.pin not in ran.stdout
    records = json.loads((tmp_path / "reports" / "results.json").read_text())["cases"]
    assert {(r["key"], r["provisioning"], r["verdict"]) for r in records} == {
        ("p11tls-lab-p256", "existing", "passed")}
    assert len(records) == 2  # TLS 1.2 and 1.3


def test_a_provision_entry_makes_and_removes_its_own_keys(lab_token, tmp_path):
    store, token, env = lab_token
    lab = write(tmp_path / "p11tls.toml", f"""
[lab.mine]
module = "{store.module}"
token_serial = "{token_serial(store, env)}"
pin_file = "pin"
mode = "provision"
keys = "p256"
clients = ["gnutls"]
""")
    write(tmp_path / "pin", token.pin).chmod(0o600)
    env = {k: v for k, v in env.items() if k != "P11TLS_LAB_FILE"}  # ./p11tls.toml
    ran = p11tls("run", "--p11-lab", "mine", "--p11-reports", "reports", "-m", "generate",
                 env=env, cwd=lab.parent)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr
    records = json.loads((tmp_path / "reports" / "results.json").read_text())["cases"]
    assert {(r["key"], r["provisioning"], r["client"], r["verdict"]) for r in records} == {
        ("p256", "generate", "gnutls", "passed")}
    listed = subprocess.run(["pkcs11-tool", "--module", str(store.module), "--token-label",
                             token.label, "--login", "--pin", token.pin, "--list-objects"],
                            capture_output=True, text=True, env=env, check=True).stdout
    assert "p11tls-" not in listed  # exactly its own keys, removed


def token_serial(store: TemporarySoftHSM, env: dict[str, str]) -> str:
    listed = subprocess.run([sys.executable, "-m", "harness.token.probe", "tokens",
                             str(store.module)],
                            capture_output=True, text=True, env=env, check=True).stdout
    return str(json.loads(listed)[0]["serial"])


def test_a_lab_module_not_installed_is_one_skip_not_a_failure(tmp_path):
    write(tmp_path / "p11tls.toml", GOOD.replace("softhsm/libsofthsm2.so", "libp11tls-none.so")
          + 'install = "apt-get install p11tls-none"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PKCS11_", "P11TLS_"))}
    ran = p11tls("run", "--p11-lab", "card", "-rs", env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "1 skipped" in ran.stdout and "failed" not in ran.stdout.split("summary")[-1]
    skip = [line for line in ran.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skip) == 1 and "apt-get install p11tls-none" in skip[0]
    bad = p11tls("run", "--p11-lab", "card", "--p11-module", "/x.so", env=env, cwd=tmp_path)
    assert bad.returncode != 0 and "drop --p11-module" in bad.stderr  # negative control
    assert "Traceback" not in bad.stdout + bad.stderr


def test_shipped_tpm2_entry_runs_the_matrix_on_swtpm(tmp_path):
    from harness.token.tpm2 import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PKCS11_", "P11TLS_"))}
    env.update(P11TLS_LAB_FILE=str(SHIPPED), P11TLS_STATE_DIR=str(tmp_path / "state"))
    ran = p11tls("run", "--p11-lab", "tpm2-pkcs11", "--p11-keys", "p256", "--p11-clients",
                 "gnutls", "--p11-reports", "reports", env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr
    assert "named module tpm2" in ran.stdout
    records = json.loads((tmp_path / "reports" / "results.json").read_text())["cases"]
    generated = [r for r in records if r["provisioning"] == "generate"]
    assert generated and all(r["verdict"] == "passed" for r in generated)
    assert all("tpm2" in json.dumps(r["module"]).lower() for r in records)
