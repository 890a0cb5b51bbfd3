"""Logs made for real for the explain tests, shared by tests/explain/**.

Parsers run on excerpts of the seed reports (tests/data/explain/) and on logs
made here for real: pkcs11-tool against a throw-away SoftHSM2 token through
OpenSC's pkcs11-spy, through p11-kit with `log-calls: yes`, and through
opensc-pkcs11 with its debug log on. Only subprocesses load PKCS#11 modules:
this pytest process may already hold the matrix's SoftHSM2 through
python-pkcs11, and one process must load a module path only once.

"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from explain_helpers import LABEL, PIN, WRONG_PIN, _first

from harness.errors import HarnessError, ToolMissing
from harness.installed import OPENSC, P11_KIT_PROXY, PKCS11_SPY

# --- logs made for real ------------------------------------------------------------


class ToolRunner:
    """pkcs11-tool against one throw-away SoftHSM2 token, through a chosen module."""

    def __init__(self, directory: Path) -> None:
        from harness.token.softhsm import TemporarySoftHSM

        tool = shutil.which("pkcs11-tool")
        if tool is None:
            pytest.skip("Requires pkcs11-tool (package opensc)")
        try:
            self.store = TemporarySoftHSM(directory / "softhsm")
            self.store.init_token(LABEL, PIN)
        except (ToolMissing, HarnessError) as exc:
            pytest.skip(f"Requires SoftHSM2: {exc}")
        self.tool = tool
        self.directory = directory
        self.data = directory / "data"
        self.data.mkdir()
        (self.data / "32").write_bytes(bytes(range(32)))
        (self.data / "100").write_bytes(bytes(range(100)))
        (self.data / "5000").write_bytes(bytes(i % 251 for i in range(5000)))
        for size in (48, 256, 1222, 1223):
            (self.data / str(size)).write_bytes(bytes(i % 251 for i in range(size)))

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.store.env, **extra}

    def run(self, module: Path, args: list[str], env: dict[str, str], prefix: tuple[str, ...] = ()):
        argv = [*prefix, self.tool, "--module", str(module), "--token-label", LABEL, *args]
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )

    def keygen(self) -> None:
        for args in (
            ["--keypairgen", "--key-type", "EC:prime256v1", "--id", "01", "--label", "ec"],
            ["--keypairgen", "--key-type", "rsa:2048", "--id", "02", "--label", "rsa"],
        ):
            proc = self.run(self.store.module, ["--login", "--pin", PIN, *args], self.env())
            assert proc.returncode == 0, proc.stderr


def _scenarios(data: Path, key_der: Path) -> dict[str, list[list[str]]]:
    login = ["--login", "--pin", PIN]
    sign = [*login, "--sign", "-o", os.devnull]
    return {
        "keygen_mechanisms": [["-M"], [*login, "-O"]],
        "wrong_pin": [["--login", "--pin", WRONG_PIN, "-O"], ["--login", "--pin", WRONG_PIN, "-O"]],
        "good_login": [[*login, "-O"]],
        "mech_invalid": [[*sign, "--id", "01", "-m", "ECDSA-SHA256", "-i", str(data / "32")]],
        "ecdsa_ok": [[*sign, "--id", "01", "-m", "ECDSA", "-i", str(data / "32")]],
        "ecdsa_long": [[*sign, "--id", "01", "-m", "ECDSA", "-i", str(data / "100")]],
        "ecdsa48": [[*sign, "--id", "01", "-m", "ECDSA", "-i", str(data / "48")]],
        # SoftHSM2: C_Sign -> CKR_GENERAL_ERROR; pkcs11-tool then tries C_SignUpdate
        # with the single-part CKM_RSA_PKCS_PSS -> CKR_OPERATION_NOT_INITIALIZED
        "pss_salt": [[*sign, "--id", "02", "-m", "RSA-PKCS-PSS", "--hash-algorithm", "SHA256",
                      "--mgf", "MGF1-SHA256", "--salt-len", "1000", "-i", str(data / "32")]],
        "multipart_ok": [[*sign, "--id", "02", "-m", "SHA256-RSA-PKCS", "-i", str(data / "5000")]],
        "import_nologin": [["--write-object", str(key_der), "--type", "privkey", "--id", "09"]],
        "import_ok": [[*login, "--write-object", str(key_der), "--type", "privkey", "--id", "08"]],
    }


@pytest.fixture(scope="session")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ToolRunner:
    tools = ToolRunner(tmp_path_factory.mktemp("explain-token"))
    tools.keygen()
    return tools


@pytest.fixture(scope="session")
def import_key(runner: ToolRunner) -> tuple[Path, bytes]:
    """A P-256 private key (DER) to import, and its private value (to check masking)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    # pkcs11-tool drops a leading zero byte of the private value (1 key in 256),
    # which would shift the hex rows the tests look for: take one without it
    while key.private_numbers().private_value.bit_length() <= 248:
        key = ec.generate_private_key(ec.SECP256R1())
    path = runner.directory / "import.der"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, key.private_numbers().private_value.to_bytes(32, "big")


@pytest.fixture(scope="session")
def spy_logs(runner: ToolRunner, import_key: tuple[Path, bytes]) -> dict[str, Path]:
    """One pkcs11-spy log per scenario: pkcs11-tool -> pkcs11-spy -> SoftHSM2."""
    spy = _first(PKCS11_SPY, "OpenSC's pkcs11-spy.so (package opensc)")
    logs = {}
    for name, runs in _scenarios(runner.data, import_key[0]).items():
        log = runner.directory / f"spy-{name}.log"
        env = runner.env(PKCS11SPY=str(runner.store.module), PKCS11SPY_OUTPUT=str(log))
        for args in runs:
            runner.run(spy, args, env)
        assert log.is_file() and log.stat().st_size, f"pkcs11-spy wrote no log for {name}"
        logs[name] = log
    return logs


@pytest.fixture(scope="session")
def p11kit_logs(runner: ToolRunner, import_key: tuple[Path, bytes]) -> dict[str, Path]:
    """p11-kit log-calls output: pkcs11-tool -> p11-kit-proxy (only our SoftHSM2) -> SoftHSM2.

    p11-kit 0.24 has no switch for its configuration paths; it reads the user's
    ~/.config/pkcs11 (HOME) unless the system pkcs11.conf says `user-config:
    none` - and never when running as root. As root the run therefore goes
    through `unshare -U`: in a fresh user namespace the uid is unmapped
    (getuid() != 0) while file access still uses the real owner.
    """
    proxy = _first(P11_KIT_PROXY, "p11-kit-proxy.so (package p11-kit-modules)")
    home = runner.directory / "p11kit-home"
    modules = home / ".config" / "pkcs11" / "modules"
    modules.mkdir(parents=True)
    # `only`: ignore the system's registered modules (opensc, the trust module …)
    (home / ".config" / "pkcs11" / "pkcs11.conf").write_text("user-config: only\n")
    (modules / "explain-softhsm.module").write_text(
        f"module: {runner.store.module}\nlog-calls: yes\n"
    )
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("Requires unshare (util-linux) to run p11-kit with a user config as root")
        prefix = (unshare, "--user")
    env = runner.env(HOME=str(home))
    probe = runner.run(proxy, ["-L"], env, prefix)
    if "C_GetSlotList = CKR_OK" not in probe.stderr:
        pytest.skip(f"p11-kit did not log calls here: {(probe.stderr or probe.stdout)[-300:]!r}")
    logs = {}
    scenarios = _scenarios(runner.data, import_key[0])
    for name in ("wrong_pin", "mech_invalid", "ecdsa_ok", "import_ok", "keygen_mechanisms"):
        log = runner.directory / f"p11kit-{name}.log"
        with log.open("w") as out:
            for args in scenarios[name]:
                out.write(runner.run(proxy, args, env, prefix).stderr)
        logs[name] = log
    return logs


@pytest.fixture(scope="session")
def opensc_debug_log(runner: ToolRunner) -> Path:
    """A real OpenSC debug log (no card here: it shows the calls and the PC/SC errors)."""
    module = _first(OPENSC, "opensc-pkcs11.so (package opensc-pkcs11)")
    log = runner.directory / "opensc-debug.log"
    conf = runner.directory / "opensc.conf"
    conf.write_text(f"app default {{\n  debug = 9;\n  debug_file = {log};\n}}\n")
    env = runner.env(OPENSC_CONF=str(conf))
    for args in (["-L"], ["-M"]):
        subprocess.run(
            [runner.tool, "--module", str(module), *args],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
    if not log.is_file():
        pytest.skip("opensc-pkcs11 wrote no debug log")
    return log


@pytest.fixture(scope="session")
def record_log(runner: ToolRunner, import_key: tuple[Path, bytes]) -> Path:
    """The harness's own records: pkcs11-tool -> the p11tls interposer -> SoftHSM2."""
    try:
        from harness.interposer import build_interposer, write_interposer_config

        interposer = build_interposer()
    except (ImportError, HarnessError) as exc:
        pytest.skip(f"Requires the p11tls interposer: {exc}")
    log = runner.directory / "calls.jsonl"
    env = runner.env(
        **write_interposer_config(runner.store.module, log, runner.directory / "interposer.conf")
    )
    scenarios = _scenarios(runner.data, import_key[0])
    for name in ("wrong_pin", "mech_invalid", "ecdsa_long", "multipart_ok", "import_ok"):
        for args in scenarios[name]:
            runner.run(interposer, args, env)
    return log


# The harness's own interposer emulating a constrained token on top of SoftHSM2
# (profile settings, see harness/interposer/interposer.c), driven by pkcs11-tool.
EMULATED = {
    "ecdsa_over_order": (
        ["sign_max_input 32", "sign_limit_mechanism CKM_ECDSA",
         "sign_over_limit_rv CKR_DATA_LEN_RANGE"],
        [["--id", "01", "-m", "ECDSA", "-i", "48"]],
    ),
    "combined_small": (
        ["add_combined CKM_ECDSA_SHA256", "sign_max_input 16",
         "sign_over_limit_rv CKR_DEVICE_ERROR"],
        [["--id", "01", "-m", "ECDSA-SHA256", "-i", "32"]],
    ),
    "limit_1223": (
        ["add_combined CKM_ECDSA_SHA256", "sign_max_input 1222",
         "sign_over_limit_rv CKR_DATA_INVALID"],
        [["--id", "01", "-m", "ECDSA-SHA256", "-i", "1222"],
         ["--id", "01", "-m", "ECDSA-SHA256", "-i", "1223"]],
    ),
    "limit_ok": (
        ["add_combined CKM_ECDSA_SHA256", "sign_max_input 1222",
         "sign_over_limit_rv CKR_DATA_INVALID"],
        [["--id", "01", "-m", "ECDSA-SHA256", "-i", "1222"]],
    ),
    "x509_hidden": (["hide CKM_RSA_X_509"], [["--id", "02", "-m", "RSA-X-509", "-i", "256"]]),
    "sign_fails": (
        ["fail_after C_Sign 0 CKR_FUNCTION_FAILED"],
        [["--id", "01", "-m", "ECDSA", "-i", "32"]],
    ),
}


@pytest.fixture(scope="session")
def emulated_logs(runner: ToolRunner, import_key: tuple[Path, bytes]) -> dict[str, Path]:
    try:
        from harness.interposer import build_interposer, write_interposer_config

        interposer = build_interposer()
    except (ImportError, HarnessError) as exc:
        pytest.skip(f"Requires the p11tls interposer: {exc}")
    sign = ["--login", "--pin", PIN, "--sign", "-o", os.devnull]
    runs = {name: (lines, [[*sign, *a[:-1], str(runner.data / a[-1])] for a in argvs])
            for name, (lines, argvs) in EMULATED.items()}
    runs["import_incomplete"] = (
        ["refuse_create CKO_PRIVATE_KEY CKK_EC CKR_TEMPLATE_INCOMPLETE"],
        [["--login", "--pin", PIN, "--write-object", str(import_key[0]), "--type", "privkey",
          "--id", "0a"]],
    )
    runs["pin_flags"] = (
        ["token_pin_flags CKF_USER_PIN_COUNT_LOW CKF_USER_PIN_FINAL_TRY"], [["-T"]])
    logs = {}
    for name, (lines, argvs) in runs.items():
        log = runner.directory / f"emulated-{name}.jsonl"
        env = runner.env(**write_interposer_config(
            runner.store.module, log, runner.directory / f"emulated-{name}.conf", lines))
        for args in argvs:
            runner.run(interposer, args, env)
        assert log.is_file(), name
        logs[name] = log
    return logs


# tpm2-pkcs11 on a throw-away swtpm (harness/token/tpm2.py): pkcs11-tool through the
# interposer (records) with TPM2_PKCS11_LOG_LEVEL=2 (the module's log on stderr),
# and once through pkcs11-spy. The TPM counts wrong PINs: "lockout" runs last.
TPM2_SCENARIOS = {
    "import": [["--write-object", "{der}", "--type", "privkey", "--id", "09"]],
    "p521": [["--keypairgen", "--key-type", "EC:secp521r1", "--id", "05", "--label", "p521"],
             ["--read-object", "--type", "pubkey", "--id", "05", "-o", os.devnull]],
    "p256": [["--keypairgen", "--key-type", "EC:prime256v1", "--id", "06", "--label", "p256"],
             ["--read-object", "--type", "pubkey", "--id", "06", "-o", os.devnull]],
    "rsa": [["--keypairgen", "--key-type", "rsa:2048", "--id", "02", "--label", "rsa"]],
    "pss_ok": [["--sign", "--id", "02", "-m", "RSA-PKCS-PSS", "--hash-algorithm", "SHA256",
                "--mgf", "MGF1-SHA256", "--salt-len", "32", "-i", "{d32}", "-o", os.devnull]],
    "lockout": [["-O"]] * 5,  # with wrong PINs
}


@pytest.fixture(scope="session")
def tpm2_logs(tmp_path_factory: pytest.TempPathFactory,
              import_key: tuple[Path, bytes]) -> dict[str, Path]:
    """name -> log; "NAME" is the module's stderr, "NAME.jsonl" the interposer's records,
    "pss_ok.spy" pkcs11-spy's log, "engine" the stderr of `openssl pkeyutl -engine pkcs11`."""
    from harness.interposer import build_interposer, write_interposer_config
    from harness.token import tpm2

    missing = tpm2.unavailable_reason()
    if missing:
        pytest.skip(missing)
    directory = tmp_path_factory.mktemp("explain-tpm2")
    (directory / "d32").write_bytes(bytes(range(32)))
    interposer = build_interposer()
    tool = shutil.which("pkcs11-tool")
    assert tool is not None
    logs: dict[str, Path] = {}
    with tpm2.tpm2_module(directory) as setup:
        tpm = setup.device
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **setup.env,
                "TPM2_PKCS11_LOG_LEVEL": "2"}

        def run(name: str, module: Path, argv: list[str], env: dict[str, str], pin: str) -> None:
            args = [a.format(der=import_key[0], d32=directory / "d32") for a in argv]
            proc = subprocess.run(
                [tool, "--module", str(module), "--token-label", setup.token_label,
                 "--login", "--pin", "env:P11PIN", *args], env={**env, "P11PIN": pin},
                capture_output=True, text=True, timeout=60, check=False)
            with (directory / name).open("a") as out:
                out.write(proc.stderr)
            tpm.flush()

        for name, runs in TPM2_SCENARIOS.items():
            env = {**base, **write_interposer_config(
                setup.module, directory / f"{name}.jsonl", directory / f"{name}.conf")}
            for n, argv in enumerate(runs):
                pin = setup.pin if name != "lockout" else f"{n}{n}{n}{n}"
                run(name, interposer, argv, env, pin)
            logs[name], logs[f"{name}.jsonl"] = directory / name, directory / f"{name}.jsonl"
            if name == "pss_ok":
                spy = _first(PKCS11_SPY, "OpenSC's pkcs11-spy.so (package opensc)")
                spy_env = {**base, "PKCS11SPY": str(setup.module),
                           "PKCS11SPY_OUTPUT": str(directory / "pss_ok.spy")}
                run("pss_ok.spy-stderr", spy, runs[0], spy_env, setup.pin)
                logs["pss_ok.spy"] = directory / "pss_ok.spy"
            if name == "p256" and shutil.which("openssl"):
                engine = subprocess.run(
                    ["openssl", "pkeyutl", "-engine", "pkcs11", "-keyform", "engine", "-inkey",
                     f"pkcs11:token={setup.token_label};id=%06;type=private", "-passin",
                     "env:P11PIN", "-sign", "-in", str(directory / "d32"), "-out", os.devnull],
                    env={**base, "P11PIN": setup.pin, "PKCS11_MODULE_PATH": str(setup.module)},
                    capture_output=True, text=True, timeout=60, check=False)
                (directory / "engine").write_text(engine.stderr)
                # Debian 12 (libp11 0.4.12, tpm2-pkcs11 1.9.0): the login breaks;
                # Debian 13 (libp11 0.4.13, tpm2-pkcs11 1.9.1): the engine signs
                if engine.returncode != 0:
                    logs["engine"] = directory / "engine"
                tpm.flush()
        tpm.clear_lockout()
    return logs
