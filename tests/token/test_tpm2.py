"""tpm2-pkcs11 on a throw-away swtpm (harness/token/tpm2.py): start, health check,
stop (also on a signal), the flush between cases, the whole matrix on it, and
the harness's PIN rules on a module whose TPM really counts wrong PINs.

Skipped with what to install where swtpm or tpm2-pkcs11 is missing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import ConfigError, TokenError
from harness.interposer import build_interposer, write_interposer_config
from harness.matrix.cases import cases
from harness.matrix.keys import KEYS
from harness.run.config import Settings, parse_clients, resolve
from harness.token import tpm2
from harness.token.named_modules import ModuleSetup
from harness.token.probe import check_login

MISSING = tpm2.unavailable_reason()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
MATRIX_CASES = cases(list(parse_clients("all")), tuple(KEYS.values()))
ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(
        f"/proc/{pid}/status").read_text().lower()


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_tpm2_is_a_named_module_not_a_file(tmp_path: Path) -> None:
    settings = resolve({"p11_module": "tpm2", "p11_reports": str(tmp_path)}, {}, {})
    assert settings.named_module == "tpm2" and settings.module is None
    # negative control: any other name is still a path that must exist
    with pytest.raises(ConfigError, match="does not exist"):
        resolve({"p11_module": "tpm3", "p11_reports": str(tmp_path)}, {}, {})


# -- start, health check, stop ----------------------------------------------------


def test_start_health_check_and_stop(tmp_path: Path) -> None:
    with tpm2.running_tpm(tmp_path) as tpm:
        assert tpm.proc is not None
        pid, port, directory = tpm.proc.pid, tpm.port, tpm.directory
        tpm.health_check()
        assert port_open(port) and port_open(port + 1)
        assert directory.is_dir()
    assert wait_gone(pid), "swtpm still running after the context ended"
    assert not directory.exists()
    # negative control: the same check against the stopped TPM fails
    with pytest.raises(OSError):
        tpm.health_check()


def test_start_failure_is_one_line_with_the_log_tail(tmp_path: Path) -> None:
    """A second swtpm on a state directory the first one holds locked exits at once."""
    with tpm2.running_tpm(tmp_path) as first:
        second = tpm2.SoftwareTPM(tmp_path / "second")
        second.directory.mkdir()
        second.state = first.state
        with pytest.raises(tpm2.TPMError) as caught:
            second.start()
        first.health_check()  # the first one is untouched
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("swtpm did not start: exit status")
    assert "swtpm log: " in message and "lock" in message.split("swtpm log: ")[1].lower()
    assert second.proc is None  # nothing left running


def test_start_retries_when_the_port_was_taken(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The race between the bind test and swtpm's bind, forced: the first port
    offered is held by a listening socket here; start moves on to free ones."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    offered = [taken.getsockname()[1]]
    real = tpm2.free_port_pair
    monkeypatch.setattr(tpm2, "free_port_pair",
                        lambda: offered.pop() if offered else real())
    try:
        with tpm2.running_tpm(tmp_path) as tpm:
            assert tpm.port != taken.getsockname()[1]
            tpm.health_check()
    finally:
        taken.close()
    assert not offered  # the taken port was tried first


CHILD = textwrap.dedent("""
    import sys, time
    from harness.token.tpm2 import tpm2_module
    with tpm2_module() as setup:
        print(setup.device.proc.pid, flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_no_swtpm_left_after_a_signal(signum: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE,
                             cwd=ROOT, text=True)
    try:
        assert child.stdout is not None
        pid = int(child.stdout.readline())
        assert alive(pid)  # control: running while its owner runs
        child.send_signal(signum)
        child.wait(timeout=10)
        assert wait_gone(pid), f"swtpm {pid} outlived its owner ({signal.Signals(signum).name})"
    finally:
        child.kill()
        child.wait()


# -- the flush between cases --------------------------------------------------------


LEAVE_LOADED = textwrap.dedent("""
    import os, sys, pkcs11
    lib = pkcs11.lib(sys.argv[1])
    session = lib.get_token(token_label=sys.argv[2]).open(user_pin=sys.stdin.read())
    os._exit(0)  # like s_client: no C_CloseSession, no C_Finalize
""")


@pytest.fixture
def tpm2_setup(tmp_path: Path) -> Iterator[ModuleSetup]:
    """A tpm2 token; its dictionary-attack counter is reset at the end, so a
    test that counts wrong PINs never leaves the TPM locked."""
    with tpm2.tpm2_module(tmp_path) as setup:
        try:
            yield setup
        finally:
            setup.device.clear_lockout()
            assert setup.device.lockout_counter() == 0


def test_flush_frees_what_an_exited_client_left(tpm2_setup: ModuleSetup) -> None:
    tpm = tpm2_setup.device
    assert tpm.loaded() == (0, 0)
    subprocess.run([sys.executable, "-c", LEAVE_LOADED, str(tpm2_setup.module),
                    tpm2_setup.token_label], input=tpm2_setup.pin, text=True, check=True,
                   env={**os.environ, **tpm2_setup.env}, capture_output=True, timeout=60)
    objects, sessions = tpm.loaded()
    assert objects + sessions >= 1  # the control: it did leave something loaded
    assert tpm.flush() == objects + sessions
    assert tpm.loaded() == (0, 0)


# -- the PIN rules on a module that counts ----------------------------------------


def _interposed(setup: ModuleSetup, directory: Path) -> tuple[Path, dict[str, str], Path]:
    record = directory / "calls.jsonl"
    env = write_interposer_config(setup.module, record, directory / "interposer.conf")
    return build_interposer(), {**setup.env, **env}, record


def _logins(record: Path) -> list[str]:
    calls = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    return [call["rv"] for call in calls if call.get("fn") == "C_Login"]


TRY_TWICE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from harness.errors import ConfigError, TokenError
    from harness.token.session import Token
    token = Token(Path(sys.argv[1]), sys.argv[2], sys.stdin.read())
    for _ in range(2):
        try:
            token.session
        except TokenError as exc:
            print(exc)
""")


def test_one_wrong_pin_is_one_login_and_one_count(tpm2_setup: ModuleSetup,
                                                   tmp_path: Path) -> None:
    tpm = tpm2_setup.device
    tpm.clear_lockout()
    module, env, record = _interposed(tpm2_setup, tmp_path)
    wrong = "0" + tpm2_setup.pin
    with pytest.raises(TokenError) as caught:
        check_login(module, tpm2_setup.token_label, wrong, env)
    assert "refused the PIN" in str(caught.value) and "\n" not in str(caught.value)
    assert wrong not in str(caught.value)
    assert _logins(record) == ["CKR_PIN_INCORRECT"]
    assert tpm.lockout_counter() == 1  # the TPM counted exactly that one try
    # a process that asks twice still sends the PIN once
    out = subprocess.run([sys.executable, "-c", TRY_TWICE, str(module),
                          tpm2_setup.token_label], input=wrong, text=True, cwd=ROOT,
                         env={**os.environ, **env}, capture_output=True, timeout=60)
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all("refused the PIN" in line for line in lines), out.stderr
    assert _logins(record) == ["CKR_PIN_INCORRECT"] * 2
    assert tpm.lockout_counter() == 2
    tpm.clear_lockout()
    check_login(module, tpm2_setup.token_label, tpm2_setup.pin, env)  # the right PIN works
    assert _logins(record)[-1] == "CKR_OK"


RAW_TRIES = textwrap.dedent("""
    import sys, pkcs11
    from pkcs11 import exceptions as e
    token = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])
    for _ in range(int(sys.argv[3])):
        try:
            token.open(user_pin="0" + sys.stdin.readline().strip()).close()
            print("ok")
        except e.PKCS11Error as exc:
            print(type(exc).__name__)
""")


def test_negative_control_the_module_locks_without_the_rules(tpm2_setup: ModuleSetup,
                                                             tmp_path: Path) -> None:
    """Without the harness's rule the same wrong PIN, sent again, locks the token
    after the TPM's max tries; the fixture's reset unlocks it."""
    tpm = tpm2_setup.device
    tpm.clear_lockout()
    tries = tpm.max_auth_fail() + 1
    out = subprocess.run([sys.executable, "-c", RAW_TRIES, str(tpm2_setup.module),
                          tpm2_setup.token_label, str(tries)],
                         input=(tpm2_setup.pin + "\n") * tries, text=True,
                         env={**os.environ, **tpm2_setup.env}, capture_output=True, timeout=60)
    assert out.stdout.split() == ["PinIncorrect"] * (tries - 1) + ["PinLocked"], out.stderr
    tpm.clear_lockout()
    tpm.flush()
    module, env, record = _interposed(tpm2_setup, tmp_path)
    check_login(module, tpm2_setup.token_label, tpm2_setup.pin, env)
    assert _logins(record) == ["CKR_OK"]


# -- the matrix on tpm2 -------------------------------------------------------------


@pytest.fixture(scope="module")
def tpm2_runner(tmp_path_factory: pytest.TempPathFactory,
                p11tls_settings: Settings) -> Iterator[object]:
    """A runner on its own tpm2 token, writing into the run's reports directory."""
    from harness.run.runner import MatrixRunner

    settings = resolve({"p11_module": "tpm2", "p11_keys": "all",
                        "p11_reports": str(p11tls_settings.reports)}, {}, {})
    with MatrixRunner(settings, workdir=tmp_path_factory.mktemp("tpm2-matrix")) as runner:
        yield runner


@pytest.mark.parametrize("case", [pytest.param(c, id=f"tpm2-{c.case_id}",
                                               marks=[getattr(pytest.mark, m)
                                                      for m in c.markers])
                                  for c in MATRIX_CASES])
def test_matrix_on_tpm2(tpm2_runner, case, p11tls_record) -> None:  # type: ignore[no-untyped-def]
    record = tpm2_runner.judge(case, tpm2_runner.run(case))
    p11tls_record(record)
    if record.verdict == "skipped":
        pytest.skip(record.error)
    assert not record.problems, f"{record.case_id}: {'; '.join(record.problems)}"
    tpm = tpm2_runner.setup.device
    assert tpm.proc is not None and tpm.proc.poll() is None, "swtpm died"
    if record.verdict == "xfailed":
        pytest.xfail(record.expected or "; ".join(record.unmeasured))
    assert record.verdict == "passed", record.verdict
