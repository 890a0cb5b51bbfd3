"""tpm2-pkcs11 on a throw-away software TPM (swtpm): a second real token.

`tpm2_module(workdir)` starts swtpm with its state in a temporary directory
on two free loopback ports chosen at run time, points tpm2-pkcs11 at it
through its own environment (TPM2_PKCS11_TCTI, TPM2_PKCS11_STORE), checks
the TPM answers, creates a token with a fresh PIN and yields a
`ModuleSetup`; at the end, or after a failure or a signal, swtpm is stopped
(its process group killed) and the directory removed.

Why the flushes: without a resource manager (tpm2-abrmd) swtpm has three
object and three session slots, and nothing frees them. tpm2-pkcs11 frees
what a process loaded at its last logout, but a client that exits without
C_Finalize (openssl s_client, gnutls-cli) leaves one object and one session
loaded, and the third such client fails. `SoftwareTPM.flush()` frees every
transient object and session between cases. It, the health check and the
dictionary-attack calls speak the TPM 2.0 command protocol directly to
swtpm's server port: no tpm2-tools process per case.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from harness.errors import HarnessError, TokenError, ToolMissing
from harness.installed import find_library
from harness.process import tail
from harness.token.named_modules import ModuleSetup
from harness.versions import package_version

TPM2_PKCS11 = ("pkcs11/libtpm2_pkcs11.so", "libtpm2_pkcs11.so.1")
TCTI_SWTPM = ("libtss2-tcti-swtpm.so.0",)
INSTALL_HINT = ("install swtpm, libtpm2-pkcs11-1, libtss2-tcti-swtpm0 (libtss2-tcti-swtpm0t64 "
                "on Debian 13) and opensc (scripts/setup-system.sh does)")
TOKEN_LABEL = "p11tls-tpm2"
START_TIMEOUT_S = 10.0
START_ATTEMPTS = 5  # a free port can be taken between the bind test and swtpm's bind

# TPM 2.0 command codes, handle ranges and properties (TPM 2.0 Part 2)
TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS = 0x8001, 0x8002
CC_GET_CAPABILITY, CC_FLUSH_CONTEXT, CC_DA_LOCK_RESET = 0x17A, 0x165, 0x139
TPM_CAP_HANDLES, TPM_CAP_TPM_PROPERTIES = 1, 6
HR_TRANSIENT, HR_LOADED_SESSION, HR_SAVED_SESSION = 0x80000000, 0x02000000, 0x03000000
TPM_PT_FAMILY_INDICATOR, TPM_PT_LOCKOUT_COUNTER = 0x100, 0x20E
TPM_PT_MAX_AUTH_FAIL = 0x20F
TPM_RH_LOCKOUT, TPM_RS_PW = 0x4000000A, 0x40000009
TPM_RC_SUCCESS = 0


class TPMError(HarnessError):
    """swtpm did not start or answer, or refused a command."""


def unavailable_reason() -> str | None:
    """None when everything tpm2_module needs is installed, else what to install."""
    missing = [name for name, found in (
        ("swtpm", shutil.which("swtpm")),
        ("libtpm2_pkcs11.so (libtpm2-pkcs11-1)", find_library(*TPM2_PKCS11)),
        ("libtss2-tcti-swtpm.so.0 (libtss2-tcti-swtpm0)", find_library(*TCTI_SWTPM)),
        ("pkcs11-tool (opensc)", shutil.which("pkcs11-tool")),
    ) if not found]
    if missing:
        return f"tpm2 needs {', '.join(missing)}: {INSTALL_HINT}"
    return None


def free_port_pair() -> int:
    """A loopback port P with P+1 free as well (swtpm's server and control ports).
    Only a test: another process may take them before swtpm binds (start retries)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise TPMError("no two adjacent free loopback ports for swtpm")


# -- cleanup of every swtpm this process started: atexit and SIGTERM/SIGHUP -------
_live: dict[int, subprocess.Popen[bytes]] = {}  # pid -> swtpm process (its own group)
_previous_handlers: dict[int, Any] = {}
_handlers_lock = threading.Lock()


def _kill_live() -> None:
    for pid in list(_live):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Kill the swtpm processes (plain syscalls), then do what the signal did before."""
    _kill_live()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_cleanup() -> None:
    """atexit always; SIGTERM and SIGHUP handlers once, from the main thread only."""
    with _handlers_lock:
        if _previous_handlers or threading.current_thread() is not threading.main_thread():
            return
        atexit.register(_kill_live)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            _previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, _on_signal)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies, even by SIGKILL."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class SoftwareTPM:
    """One swtpm process: TPM 2.0 on two loopback ports, state in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state = directory / "state"
        self.log = directory / "swtpm.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> None:
        """Start swtpm on free ports (retrying when a port was taken meanwhile)
        and wait until the TPM answers; TPMError with the log's tail if not."""
        swtpm = shutil.which("swtpm")
        if swtpm is None:
            raise ToolMissing(f"swtpm not found: {INSTALL_HINT}")
        try:
            self.state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TPMError(f"swtpm state directory {self.state}: {exc.strerror}") from None
        _install_cleanup()
        main = threading.current_thread() is threading.main_thread()
        last = ""
        for _ in range(START_ATTEMPTS):
            self.port = free_port_pair()
            self.log.write_bytes(b"")
            argv = [swtpm, "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
                    "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                    "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                    "--flags", "not-need-init,startup-clear",
                    "--log", f"file={self.log},level=2"]
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(self.log, "ab"),  # noqa: SIM115 - the child keeps it
                start_new_session=True,  # its own group: killpg reaches all of it
                preexec_fn=_die_with_parent if main else None)  # noqa: PLW1509
            _live[self.proc.pid] = self.proc
            last = self._wait_ready()
            if not last:
                return
            self.stop()
            if "in use" not in last:  # not a port race: retrying will not help
                break
        raise TPMError(f"swtpm did not start: {last}; swtpm log: "
                       f"{' | '.join(tail(self.log, 5).splitlines()) or '(empty)'}")

    def _wait_ready(self) -> str:
        """'' once the TPM answers a command, else why it did not."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = tail(self.log, 5)
                return (f"exit status {self.proc.returncode}"
                        + (" (address in use)" if "in use" in log else ""))
            try:
                self.health_check()
                return ""
            except (OSError, TPMError):
                time.sleep(0.005)
        return f"no answer on port {self.port} within {START_TIMEOUT_S:g} s"

    def stop(self) -> None:
        """Kill swtpm's process group (SIGTERM, then SIGKILL) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _live.pop(proc.pid, None)

    # -- TPM commands over swtpm's server port ---------------------------------------
    def command(self, code: int, body: bytes = b"", tag: int = TPM_ST_NO_SESSIONS,
                ) -> tuple[int, bytes]:
        """(response code, response parameters) of one TPM command."""
        packet = struct.pack(">HII", tag, 10 + len(body), code) + body
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(packet)
            head = _read(conn, 10)
            _, size, rc = struct.unpack(">HII", head)
            return rc, _read(conn, size - 10)

    def _checked(self, what: str, code: int, body: bytes = b"",
                 tag: int = TPM_ST_NO_SESSIONS) -> bytes:
        rc, rest = self.command(code, body, tag)
        if rc != TPM_RC_SUCCESS:
            raise TPMError(f"TPM refused {what}: response code {rc:#x}")
        return rest

    def property(self, prop: int) -> int:
        rest = self._checked("TPM2_GetCapability", CC_GET_CAPABILITY,
                             struct.pack(">III", TPM_CAP_TPM_PROPERTIES, prop, 1))
        _, _, count = struct.unpack(">BII", rest[:9])
        for i in range(count):
            found, value = struct.unpack(">II", rest[9 + 8 * i: 17 + 8 * i])
            if found == prop:
                return int(value)
        raise TPMError(f"TPM did not report property {prop:#x}")

    def health_check(self) -> None:
        """The TPM is started and answers as a TPM 2.0 (TPMError otherwise)."""
        family = self.property(TPM_PT_FAMILY_INDICATOR)
        if family != 0x322E3000:  # "2.0"
            raise TPMError(f"not a TPM 2.0: family indicator {family:#x}")

    def handles(self, first: int) -> list[int]:
        rest = self._checked("TPM2_GetCapability", CC_GET_CAPABILITY,
                             struct.pack(">III", TPM_CAP_HANDLES, first, 64))
        _, _, count = struct.unpack(">BII", rest[:9])
        found = [h for (h,) in struct.iter_unpack(">I", rest[9:9 + 4 * count])]
        kinds = (0x80,) if first == HR_TRANSIENT else (0x02, 0x03)  # sessions: both forms
        return [h for h in found if h >> 24 in kinds]

    def loaded(self) -> tuple[int, int]:
        """(transient objects, sessions loaded or saved) in the TPM now."""
        sessions = set(self.handles(HR_LOADED_SESSION)) | set(self.handles(HR_SAVED_SESSION))
        return len(self.handles(HR_TRANSIENT)), len(sessions)

    def flush(self) -> int:
        """Flush every transient object and session; how many there were."""
        flushed = 0
        for first in (HR_TRANSIENT, HR_LOADED_SESSION, HR_SAVED_SESSION):
            for handle in self.handles(first):
                rc, _ = self.command(CC_FLUSH_CONTEXT, struct.pack(">I", handle))
                flushed += rc == TPM_RC_SUCCESS
        return flushed

    def lockout_counter(self) -> int:
        """Failed authorisations the TPM's dictionary-attack protection counts."""
        return self.property(TPM_PT_LOCKOUT_COUNTER)

    def max_auth_fail(self) -> int:
        return self.property(TPM_PT_MAX_AUTH_FAIL)

    def _lockout_auth(self) -> bytes:
        """The authorisation area for TPM_RH_LOCKOUT with its (empty) password."""
        auth = struct.pack(">IHBH", TPM_RS_PW, 0, 0, 0)
        return struct.pack(">I", TPM_RH_LOCKOUT) + struct.pack(">I", len(auth)) + auth

    def clear_lockout(self) -> None:
        """TPM2_DictionaryAttackLockReset: the counter back to 0, no lockout."""
        self._checked("TPM2_DictionaryAttackLockReset", CC_DA_LOCK_RESET,
                      self._lockout_auth(), TPM_ST_SESSIONS)



def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise TPMError("swtpm closed the connection mid-response")
        data += chunk
    return data


def init_token(module: Path, env: dict[str, str], label: str, pin: str) -> None:
    """A tpm2-pkcs11 token in the first free slot (pkcs11-tool; PINs through its
    environment, never argv)."""
    tool = shutil.which("pkcs11-tool")
    if tool is None:
        raise ToolMissing(f"pkcs11-tool not found: {INSTALL_HINT}")
    child = {**os.environ, **env, "P11TLS_SO_PIN": secrets.token_hex(8), "P11TLS_PIN": pin}
    for step in (["--init-token", "--label", label, "--so-pin", "env:P11TLS_SO_PIN"],
                 ["--token-label", label, "--login", "--login-type", "so",
                  "--so-pin", "env:P11TLS_SO_PIN", "--init-pin", "--pin", "env:P11TLS_PIN"]):
        proc = subprocess.run([tool, "--module", str(module), *step], env=child,
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
            raise TokenError(f"tpm2-pkcs11 could not initialise token {label!r} "
                             f"({step[0]}): {lines[-1] if lines else proc.returncode}")


def module_versions() -> dict[str, str | None]:
    return {"tpm2-pkcs11": package_version(find_library(*TPM2_PKCS11)),
            "swtpm": package_version(Path(shutil.which("swtpm") or "swtpm"))}


def _unload(module: Path) -> None:
    """C_Finalize and unload the module in this process: a later TPM (other port)
    must get a fresh C_Initialize that reads the new environment."""
    try:
        import pkcs11
    except ImportError:  # pragma: no cover - python-pkcs11 is a dependency
        return
    pkcs11.unload(str(module))


@contextlib.contextmanager
def running_tpm(workdir: Path | None = None) -> Iterator[SoftwareTPM]:
    """A started, health-checked swtpm in a temporary directory, stopped at the end."""
    directory = Path(tempfile.mkdtemp(prefix="tpm2-", dir=workdir))
    tpm = SoftwareTPM(directory)
    try:
        tpm.start()
        yield tpm
    finally:
        tpm.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def tpm2_module(workdir: Path | None = None) -> Iterator[ModuleSetup]:
    """tpm2-pkcs11 with a fresh token on a throw-away swtpm (see the module docstring)."""
    reason = unavailable_reason()
    if reason:
        raise ToolMissing(reason)
    module = find_library(*TPM2_PKCS11)
    assert module is not None
    with running_tpm(workdir) as tpm:
        store = tpm.directory / "store"
        store.mkdir(mode=0o700)
        env = {"TPM2_PKCS11_TCTI": tpm.tcti, "TPM2TOOLS_TCTI": tpm.tcti,
               "TPM2_PKCS11_STORE": str(store)}
        pin = secrets.token_hex(4)
        init_token(module, env, TOKEN_LABEL, pin)
        tpm.flush()  # pkcs11-tool leaves the token's objects loaded
        tpm.health_check()
        setup = ModuleSetup(
            name="tpm2", module=module, token_label=TOKEN_LABEL, pin=pin, env=env,
            description=f"tpm2-pkcs11 on a throw-away swtpm (127.0.0.1:{tpm.port})",
            versions=module_versions(), after_case=tpm.flush, release_sessions=True,
            device=tpm)
        try:
            yield setup
        finally:
            _unload(module)
