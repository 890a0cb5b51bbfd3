"""The warm module (--p11-warm): one long-lived process loads the module once
and serves every client through p11-kit-client.so.

The RPC is p11-kit's own: libp11-kit exports
`p11_kit_remote_serve_module(module, in_fd, out_fd)` (p11-kit/remote.h, in
0.24.1 and 0.25.5); only the accept loop is ours. The server process keeps
one managed instance of the module initialised for the whole run
(`p11_kit_module_load` + `p11_kit_module_initialize`: p11-kit initialises the
real module once however many managed instances there are), and serves each
connection, in a thread, with a managed instance of its own, so one client's
C_Finalize closes only its own sessions.

p11-kit's RPC client drops mechanisms it cannot marshal (0.24.1: CKM_ECDSA_SHA*,
CKM_SHA*_RSA_PKCS_PSS, CKM_SHA224_RSA_PKCS; both 0.24.1 and 0.25.5:
CKM_EDDSA): a warm path that changes what the client is offered would change
what is measured, so at start the mechanism lists (with flags and key sizes)
direct and through the socket are compared, and the warm module is refused
in one line naming what p11-kit would hide.

    python -m harness.token.warm serve MODULE SOCKET      (the server)
    python -m harness.token.warm list MODULE LABEL        (a token's mechanisms, JSON)
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, TokenError
from harness.installed import find_library
from harness.interposer import build_interposer, write_interposer_config
from harness.matrix.keys import KeySpec
from harness.pkcs11.lookup import mechanism_name

P11_KIT_CLIENT = ("pkcs11/p11-kit-client.so", "p11-kit-client.so")
LIBP11_KIT = "libp11-kit.so.0"
START_TIMEOUT_S = 120.0

CK_ULONG = ctypes.c_ulong
CK_RV = CK_ULONG
# CK_FUNCTION_LIST: the version, then the functions in PKCS#11 2.40 order
_FUNCTIONS = ("C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
              "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo")


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", ctypes.c_ubyte * 2)] + [(n, ctypes.c_void_p) for n in _FUNCTIONS]


class _MechanismInfo(ctypes.Structure):
    _fields_ = [("min", CK_ULONG), ("max", CK_ULONG), ("flags", CK_ULONG)]


def _call(functions: _FunctionList, name: str, *argtypes: Any) -> Any:
    return ctypes.CFUNCTYPE(CK_RV, *argtypes)(getattr(functions, name))


def list_mechanisms(module: Path, label: str) -> dict[str, list[int]]:
    """The mechanisms of the token `label` as a client of `module` sees them:
    name -> [flags, min key size, max key size]. Raw ctypes: every number,
    also those python-pkcs11 has no name for."""
    lib = ctypes.CDLL(str(module))
    get = lib.C_GetFunctionList
    pointer = ctypes.POINTER(_FunctionList)()
    get.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
    if get(ctypes.byref(pointer)) != 0:
        raise TokenError(f"{module}: C_GetFunctionList failed")
    f = pointer.contents
    rv = _call(f, "C_Initialize", ctypes.c_void_p)(None)
    if rv not in (0, 0x191):  # CKR_CRYPTOKI_ALREADY_INITIALIZED
        raise TokenError(f"{module}: C_Initialize returned {rv:#x}")
    count = CK_ULONG(0)
    slot_list = _call(f, "C_GetSlotList", ctypes.c_ubyte, ctypes.POINTER(CK_ULONG),
                      ctypes.POINTER(CK_ULONG))
    slot_list(1, None, ctypes.byref(count))
    slots = (CK_ULONG * max(count.value, 1))()
    slot_list(1, slots, ctypes.byref(count))
    token_info = _call(f, "C_GetTokenInfo", CK_ULONG, ctypes.c_char_p)
    for slot in slots[:count.value]:
        buffer = ctypes.create_string_buffer(1024)  # CK_TOKEN_INFO: label[32] first
        if token_info(slot, buffer) == 0 and buffer.raw[:32].decode(
                errors="replace").rstrip() == label:
            return _mechanisms_of(f, slot)
    raise TokenError(f"no token labelled {label!r} in {module}")


def _mechanisms_of(f: _FunctionList, slot: int) -> dict[str, list[int]]:
    count = CK_ULONG(0)
    mech_list = _call(f, "C_GetMechanismList", CK_ULONG, ctypes.POINTER(CK_ULONG),
                      ctypes.POINTER(CK_ULONG))
    mech_list(slot, None, ctypes.byref(count))
    types = (CK_ULONG * max(count.value, 1))()
    mech_list(slot, types, ctypes.byref(count))
    mech_info = _call(f, "C_GetMechanismInfo", CK_ULONG, CK_ULONG,
                      ctypes.POINTER(_MechanismInfo))
    found: dict[str, list[int]] = {}
    for value in types[:count.value]:
        info = _MechanismInfo()
        rv = mech_info(slot, value, ctypes.byref(info))
        name = mechanism_name(int(value)) or f"{int(value):#x}"
        found[name] = [int(info.flags), int(info.min), int(info.max)] if rv == 0 else [-1, 0, 0]
    return found


def hidden_by_rpc(direct: Mapping[str, list[int]], remote: Mapping[str, list[int]]) -> str | None:
    """What the RPC would change, in words; None: the same list, flags and sizes."""
    gone = sorted(set(direct) - set(remote))
    changed = sorted(m for m in set(direct) & set(remote) if direct[m] != remote[m])
    added = sorted(set(remote) - set(direct))
    parts = ([f"hide {', '.join(gone)}"] if gone else []) + (
        [f"change the flags or key sizes of {', '.join(changed)}"] if changed else []) + (
        [f"add {', '.join(added)}"] if added else [])
    return " and ".join(parts) or None


def p11_kit_version() -> str:
    """p11-kit's version (pkg-config, else the Debian package), for the records."""
    for argv in (["pkg-config", "--modversion", "p11-kit-1"],
                 ["dpkg-query", "-W", "-f", "${Version}", "libp11-kit0"]):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                 check=False)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip():
            return "p11-kit " + out.stdout.strip().split("-")[0]
    return "p11-kit (version unknown)"


# The mechanisms a run's keys are signed and made with (per key algorithm):
# the ones whose loss through the RPC would change what is measured.
RUN_MECHANISMS = {
    "rsa": re.compile(r"^CKM_(RSA_PKCS(_PSS|_KEY_PAIR_GEN)?|RSA_X_509|SHA\d*_RSA_PKCS(_PSS)?)$"),
    "ecdsa": re.compile(r"^CKM_(ECDSA(_SHA\d+)?|EC_KEY_PAIR_GEN)$"),
    "eddsa": re.compile(r"^CKM_(EDDSA|EC_EDWARDS_KEY_PAIR_GEN)$"),
}


def run_mechanisms(found: Mapping[str, list[int]], algorithms: set[str]) -> dict[str, list[int]]:
    """The part of a mechanism list that the run's key algorithms use."""
    return {m: v for m, v in found.items()
            if any(RUN_MECHANISMS[a].match(m) for a in algorithms)}


@dataclass
class WarmModule:
    """A running warm server: what the clients load instead of the module, and
    the environment that points them at its socket."""

    client_module: Path
    env: dict[str, str]
    process: subprocess.Popen[str]
    via: str  # what every record says: "p11-kit RPC (p11-kit 0.25.5 ...)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_warm(module: Path, label: str, directory: Path, env: Mapping[str, str],
               algorithms: set[str], direct: tuple[Path, Mapping[str, str]] | None = None
               ) -> WarmModule:
    """Start the server for `module` (loaded with `env`), check that the token's
    mechanisms for the run's key `algorithms` (rsa, ecdsa, eddsa) are the same,
    flags and key sizes included, through p11-kit's RPC, and return it;
    ConfigError in one line when p11-kit would change what the clients are offered.
    `direct`: the module (and its environment) to compare with, when the server
    loads a recording interposer above it (its record: one C_Initialize)."""
    client = find_library(*P11_KIT_CLIENT)
    if client is None:
        raise ConfigError("--p11-warm needs p11-kit-client.so (package p11-kit-modules)")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = directory / "warm.sock"
    proc = subprocess.Popen([sys.executable, "-m", "harness.token.warm", "serve", str(module),
                             str(sock)], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    warm = WarmModule(client, {"P11_KIT_SERVER_ADDRESS": f"unix:path={sock}"}, proc,
                      f"p11-kit RPC ({p11_kit_version()}, p11-kit-client.so to one warm "
                      "process of the harness)")
    try:
        line = _first_line(proc)
        if line != "ready":
            raise ConfigError(f"--p11-warm: the warm process did not start: {line}")
        plain, plain_env = direct or (module, env)
        changed = hidden_by_rpc(run_mechanisms(_ask_list(plain, label, plain_env), algorithms),
                                run_mechanisms(_ask_list(client, label, warm.env), algorithms))
        if changed:
            raise ConfigError(
                f"--p11-warm refused: the RPC of {p11_kit_version()} would {changed} "
                "for the clients, so what they are offered would not be the token's; run "
                "without --p11-warm")
    except BaseException:
        warm.stop()
        raise
    return warm


def _first_line(proc: subprocess.Popen[str]) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(
        proc.stdout.readline().strip() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    if not result or not result[0]:
        error = proc.stderr.read().strip().splitlines() if proc.poll() is not None and \
            proc.stderr else []
        return error[-1] if error else f"no answer within {START_TIMEOUT_S:g} s"
    return result[0]


def _ask_list(module: Path, label: str, env: Mapping[str, str]) -> dict[str, list[int]]:
    proc = subprocess.run([sys.executable, "-m", "harness.token.warm", "list", str(module),
                           label], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise ConfigError(f"--p11-warm: listing the mechanisms of {module.name}: {lines[-1]}")
    try:
        found: dict[str, list[int]] = json.loads(proc.stdout)
    except ValueError:
        said = (proc.stdout.strip() or proc.stderr.strip() or "nothing").splitlines()[-1]
        raise ConfigError(f"--p11-warm: listing the mechanisms of {module.name} gave no "
                          f"list: {said[:200]}") from None
    return found


# -- the server process -------------------------------------------------------------------


def serve(module: Path, path: Path) -> int:
    kit = ctypes.CDLL(LIBP11_KIT)
    kit.p11_kit_module_load.restype = ctypes.c_void_p
    kit.p11_kit_module_load.argtypes = [ctypes.c_char_p, ctypes.c_int]
    kit.p11_kit_module_initialize.argtypes = [ctypes.c_void_p]
    kit.p11_kit_module_initialize.restype = CK_RV
    kit.p11_kit_module_release.argtypes = [ctypes.c_void_p]
    kit.p11_kit_remote_serve_module.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    kit.p11_kit_remote_serve_module.restype = ctypes.c_int
    name = str(module).encode()
    keeper = kit.p11_kit_module_load(name, 0)  # managed: the module stays initialised
    if not keeper:
        print(f"p11-kit could not load {module}", file=sys.stderr)
        return 1
    rv = kit.p11_kit_module_initialize(keeper)
    if rv != 0:
        print(f"C_Initialize of {module} returned {rv:#x}", file=sys.stderr)
        return 1
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)
    old = os.umask(0o177)  # the socket: this user only
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(16)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # no C_Finalize with calls in flight
    print("ready", flush=True)

    def one(conn: socket.socket) -> None:
        instance = kit.p11_kit_module_load(name, 0)
        try:
            if instance:
                kit.p11_kit_remote_serve_module(instance, conn.fileno(), conn.fileno())
        finally:
            conn.close()
            if instance:
                kit.p11_kit_module_release(instance)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        return serve(Path(argv[1]), Path(argv[2]))
    if len(argv) == 3 and argv[0] == "list":
        try:
            print(json.dumps(list_mechanisms(Path(argv[1]), argv[2])), flush=True)
        except (OSError, TokenError) as exc:
            print(str(exc), file=sys.stderr)
            return 1
        os._exit(0)  # no C_Finalize: a warm module's client leaves the server as it was
    print("usage: python -m harness.token.warm serve MODULE SOCKET | list MODULE LABEL",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


WARM_RECORD = "calls-warm.jsonl"


def start_run_warm(module: Path, label: str, workdir: Path, env: Mapping[str, str],
                   keys: Sequence[KeySpec], named: bool) -> WarmModule:
    """--p11-warm in a run: the warm process loads the recording interposer above
    the module, so its record (warm/calls-warm.jsonl) shows the one
    C_Initialize of the whole run; clients and the harness's own process load
    p11-kit-client.so (with the interposer directly above it)."""
    if named:
        raise ConfigError("--p11-warm serves a PKCS#11 module file; a named module (tpm2) "
                          "brings up its own token: drop --p11-warm")
    directory = workdir / "warm"
    directory.mkdir(parents=True, exist_ok=True)
    algorithms = {k.algorithm.value for k in keys}
    if module.resolve() == build_interposer().resolve():
        # the module is the interposer already (its configuration in `env`, e.g.
        # bench_warm's latency profile): it records itself, served as it is
        return start_warm(module, label, directory, env, algorithms)
    conf = write_interposer_config(module, directory / WARM_RECORD,
                                   directory / "interposer-warm.conf")
    return start_warm(build_interposer(), label, directory, {**env, **conf},
                      algorithms, direct=(module, env))
