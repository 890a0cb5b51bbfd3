"""Java's SunPKCS11 provider as a TLS client: the bundled java/P11TlsClient.java.

The source is compiled with the JDK's `javac` into a per-user cache and run as
one warm JVM per SunPKCS11 configuration (module, token, PIN, extra config
lines, environment), so a session pays the JVM start once. The harness talks
to the JVM over stdin/stdout, one line per request and per answer (the format
is described at the top of the Java source).

Safety: the PIN is sent to the token once per configuration. A refused login
is remembered here as well as in the JVM, so a restarted JVM never sends the
same PIN again.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import quote_plus, unquote_plus

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.errors import ConfigError, HarnessError, TokenError, ToolMissing
from harness.process import base_env, kill_group, tail
from harness.versions import first_version

if TYPE_CHECKING:
    from harness.config import Settings

__all__ = ["COMBINED_MECHANISMS", "JDK", "JavaClient", "JavaNoCombinedClient", "JavaResult",
           "build_classes", "find_java_sources", "find_jdk"]

MIN_JAVA = 17
MAIN_CLASS = "P11TlsClient"
JDK_HINT = "install a JDK >= 17 (openjdk-17-jdk-headless) or set JAVA_HOME / --java"

# Every combined hash-and-sign mechanism SunPKCS11 (JDK 17) knows for RSA and
# EC keys. Disabling them makes SunPKCS11 hash on the host and call the raw
# mechanism (CKM_ECDSA, CKM_RSA_PKCS, CKM_RSA_PKCS_PSS): the seed-001 workaround.
COMBINED_MECHANISMS: tuple[str, ...] = (
    "CKM_ECDSA_SHA1", "CKM_ECDSA_SHA224", "CKM_ECDSA_SHA256", "CKM_ECDSA_SHA384",
    "CKM_ECDSA_SHA512",
    "CKM_ECDSA_SHA3_224", "CKM_ECDSA_SHA3_256", "CKM_ECDSA_SHA3_384", "CKM_ECDSA_SHA3_512",
    "CKM_SHA1_RSA_PKCS", "CKM_SHA224_RSA_PKCS", "CKM_SHA256_RSA_PKCS", "CKM_SHA384_RSA_PKCS",
    "CKM_SHA512_RSA_PKCS",
    "CKM_SHA3_224_RSA_PKCS", "CKM_SHA3_256_RSA_PKCS", "CKM_SHA3_384_RSA_PKCS",
    "CKM_SHA3_512_RSA_PKCS",
    "CKM_SHA1_RSA_PKCS_PSS", "CKM_SHA224_RSA_PKCS_PSS", "CKM_SHA256_RSA_PKCS_PSS",
    "CKM_SHA384_RSA_PKCS_PSS", "CKM_SHA512_RSA_PKCS_PSS",
    "CKM_SHA3_224_RSA_PKCS_PSS", "CKM_SHA3_256_RSA_PKCS_PSS", "CKM_SHA3_384_RSA_PKCS_PSS",
    "CKM_SHA3_512_RSA_PKCS_PSS",
)

# Keywords the harness writes itself; the same keyword twice is a SunPKCS11 error.
_OWN_KEYWORDS = ("name", "library", "slot", "slotListIndex", "nssArgs")

# Serial GC and the C1 compiler only: on a 2-core machine C2's compiler threads
# compete with the handshakes. Measured there: JVM start + first handshake
# ~0.55 s instead of ~0.8 s, warm handshakes as fast or faster.
DEFAULT_JAVA_OPTIONS: tuple[str, ...] = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


@dataclass(frozen=True)
class JavaResult(ClientResult):
    """A ClientResult with what the JVM itself reported."""

    protocol: str | None = None  # negotiated, as JSSE saw it: "TLSv1.2"
    cipher: str | None = None
    ckr: str | None = None  # CKR_ code from a PKCS11Exception in the chain
    handshake_ms: float | None = None  # measured inside the JVM


# -- the JDK ---------------------------------------------------------------------


@dataclass(frozen=True)
class JDK:
    home: Path
    java: Path
    javac: Path
    version: str  # java.runtime.version, e.g. 17.0.15+6-Debian-1deb12u1
    runtime: str  # "OpenJDK Runtime Environment"
    feature: int  # 17


def _home_from(path: Path) -> Path:
    """A JDK home from a home directory or from a bin/java(c) path."""
    if path.is_file() or path.name in ("java", "javac"):
        return path.resolve().parent.parent
    return path


def find_jdk(java_home: Path | str | None = None) -> JDK:
    """The JDK from `java_home`, else $JAVA_HOME, else `javac` on PATH.

    Raises ToolMissing naming what is missing and how to get it.
    """
    if java_home:
        home, origin = _home_from(Path(java_home)), "--java"
    elif os.environ.get("JAVA_HOME"):
        home, origin = Path(os.environ["JAVA_HOME"]), "JAVA_HOME"
    else:
        found = shutil.which("javac")
        if found is None:
            raise ToolMissing(f"javac not found: {JDK_HINT}")
        home, origin = Path(found).resolve().parent.parent, "PATH"
    javac, java = home / "bin" / "javac", home / "bin" / "java"
    if not os.access(javac, os.X_OK):
        raise ToolMissing(f"javac not found in {home} (from {origin}): {JDK_HINT}")
    if not os.access(java, os.X_OK):
        raise ToolMissing(f"java not found in {home} (from {origin}): {JDK_HINT}")
    try:
        proc = subprocess.run([str(java), "-version"], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolMissing(f"{java} -version failed ({exc}): {JDK_HINT}") from None
    feature, version, runtime = _parse_java_version(proc.stderr)
    if feature is None:
        raise ToolMissing(f"cannot read the version of {java}: {proc.stderr.strip()[:200]!r}")
    if feature < MIN_JAVA:
        raise ToolMissing(f"{java} is Java {feature} (from {origin}), too old: {JDK_HINT}")
    return JDK(home=home, java=java, javac=javac, version=version, runtime=runtime,
               feature=feature)


def _parse_java_version(text: str) -> tuple[int | None, str, str]:
    first = re.search(r'version "([^"]+)"', text)
    if first is None:
        return None, "", ""
    short = first.group(1)
    parts = short.split(".")
    feature = int(parts[1] if parts[0] == "1" else re.match(r"\d+", parts[0]).group())  # type: ignore[union-attr]
    build = re.search(r"^(.*Runtime Environment.*?)\s*\(build ([^)]+)\)", text, re.MULTILINE)
    if build:
        return feature, build.group(2), build.group(1).strip()
    return feature, short, ""


# -- the Java source and its compiled classes ------------------------------------


def find_java_sources() -> Path:
    """The directory holding P11TlsClient.java.

    A source checkout has it at the repository root (java/); an installed
    package has it as package data in harness/java_src/.
    """
    package = Path(__file__).resolve().parent.parent  # harness/
    for candidate in (package.parent / "java", package / "java_src"):
        if (candidate / f"{MAIN_CLASS}.java").is_file():
            return candidate
    raise HarnessError(
        f"{MAIN_CLASS}.java not found in {package.parent / 'java'} or {package / 'java_src'}: "
        "the installation is incomplete; reinstall pkcs11-tls-harness"
    )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "p11tls"


def build_classes(jdk: JDK, sources: Path, cache_dir: Path | None = None) -> Path:
    """Compile `sources` once into cache_dir/java-<hash of the sources>.

    The hash covers every .java file, so an edited source gets a new directory.
    javac writes into a private temporary directory that is renamed into place,
    so parallel workers never see half-written classes.
    """
    cache_dir = cache_dir or default_cache_dir()
    files = sorted(sources.glob("*.java"))
    if not files:
        raise HarnessError(f"no .java files in {sources}")
    digest = hashlib.sha256(f"release={MIN_JAVA}\n".encode())
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    target = cache_dir / f"java-{digest.hexdigest()[:16]}"
    if (target / f"{MAIN_CLASS}.class").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=cache_dir))
    try:
        proc = subprocess.run(
            [str(jdk.javac), "--release", str(MIN_JAVA), "-encoding", "UTF-8",
             "-d", str(work), *map(str, files)],
            capture_output=True, text=True, timeout=180, check=False,
        )
        if proc.returncode != 0:
            raise HarnessError(
                f"javac could not compile {sources}: {(proc.stderr or proc.stdout).strip()[:2000]}"
            )
        try:
            os.rename(work, target)
        except OSError:
            if not (target / f"{MAIN_CLASS}.class").is_file():
                raise
            # another worker finished first; its classes are the same
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


# -- finding the slot --------------------------------------------------------------

# Run in a child Python: this process may already have SoftHSM (or the
# interposer) loaded through python-pkcs11, and one process must load one
# module path once. The child does what SunPKCS11 does with slotListIndex:
# C_GetSlotList(FALSE), then C_GetTokenInfo per slot.
_SLOT_LOOKUP = r"""
import json, sys
import pkcs11
from pkcs11 import exceptions as e
lib = pkcs11.lib(sys.argv[1])
found, labels = [], []
for index, slot in enumerate(lib.get_slots(token_present=False)):
    try:
        token = slot.get_token()
    except (e.TokenNotPresent, e.TokenNotRecognised, e.DeviceRemoved):
        continue
    labels.append(token.label)
    if token.label == sys.argv[2]:
        found.append({"slot": slot.slot_id, "index": index})
print(json.dumps({"found": found, "labels": labels}))
"""


@dataclass(frozen=True)
class SlotRef:
    slot_id: int
    index: int  # position in C_GetSlotList(FALSE)

    @property
    def config_line(self) -> str:
        # SunPKCS11 parses `slot` as a Java int; slotListIndex covers larger ids.
        if 0 <= self.slot_id <= 0x7FFFFFFF:
            return f"slot = {self.slot_id}"
        return f"slotListIndex = {self.index}"


def find_slot(module: Path, token_label: str, env: dict[str, str], timeout: float = 60) -> SlotRef:
    """The slot holding the token labelled `token_label` (in a child process)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _SLOT_LOOKUP, str(module), token_label],
            env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        raise TokenError(f"listing the slots of {module} took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TokenError(f"cannot list the slots of {module}: {last}")
    data = json.loads(proc.stdout)
    if not data["found"]:
        present = ", ".join(map(repr, data["labels"])) or "none"
        raise TokenError(f"no token labelled {token_label!r} in {module}; tokens present: "
                         f"{present} (check --p11-token-label)")
    if len(data["found"]) > 1:
        raise TokenError(f"more than one token labelled {token_label!r} in {module}: "
                         "the harness needs a unique label")
    return SlotRef(int(data["found"][0]["slot"]), int(data["found"][0]["index"]))


# -- the line protocol --------------------------------------------------------------


def encode_request(verb: str, **fields: object) -> str:
    """One request line: verb, then key=value with URL-encoded values."""
    return " ".join([verb, *(f"{k}={quote_plus(str(v))}" for k, v in fields.items())])


def decode_answer(line: str) -> tuple[str, dict[str, str]]:
    words = line.strip().split(" ")
    pairs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    return words[0], {k: unquote_plus(v) for k, v in pairs.items()}


# -- one warm JVM ------------------------------------------------------------------------


_VERBS = {b"ready", b"fatal", b"ok", b"fail"}  # first words of the JVM's protocol lines


class _Died(Exception):
    pass


class _NoAnswer(Exception):
    pass


class _WarmJVM:
    """One running P11TlsClient process and its line protocol."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path,
                 config_dir: Path) -> None:
        self.log_path = log_path
        self.config_dir = config_dir
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                start_new_session=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        with open(self.log_path, "ab") as log:
            for raw in stream:
                if raw.split(b" ", 1)[0].strip() in _VERBS:
                    self._lines.put(raw.decode(errors="replace"))
                else:
                    # HotSpot prints its crash banner to stdout whatever the options
                    log.write(raw)
                    log.flush()
        self._lines.put(None)

    def drain(self, timeout: float) -> None:
        """Wait until everything the JVM wrote to stdout has been read."""
        self._reader.join(timeout)

    def output_since(self, offset: int) -> str:
        """What the JVM wrote to its own log after `offset` (stderr, crash banner)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def receive(self, timeout: float) -> tuple[str, dict[str, str]]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise _NoAnswer from None
        if line is None:
            self._lines.put(None)  # stays dead for any later call
            raise _Died
        return decode_answer(line)

    def ask(self, request: str, timeout: float) -> tuple[str, dict[str, str]]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(request.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise _Died from None
        return self.receive(timeout)

    def exit_status(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def stop(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # EOF: the JVM ends on its own
            except OSError:
                pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.config_dir, ignore_errors=True)


@dataclass(frozen=True)
class _ConfigKey:
    module: str
    token_label: str
    pin: str = field(repr=False)
    env: tuple[tuple[str, str], ...]

    @property
    def login(self) -> tuple[str, str, str]:
        return self.module, self.token_label, self.pin


# -- the client ----------------------------------------------------------------------------


class JavaClient(Client):
    """Java SunPKCS11 + JSSE, one warm JVM per (module, token, PIN, environment)."""

    name = "java"
    marker = "java"
    # How long the harness waits for an answer beyond job.timeout_s: the JVM's
    # own socket timeouts fire first, so this only catches a JVM stuck in C_Sign.
    answer_grace_s: float = 3.0

    def __init__(
        self,
        java_home: Path | str | None = None,
        extra_config: Sequence[str] = (),
        *,
        cache_dir: Path | None = None,
        java_options: Sequence[str] = DEFAULT_JAVA_OPTIONS,
        start_timeout_s: float = 60.0,
    ) -> None:
        """java_home: a JDK home or its bin/java (else $JAVA_HOME, else PATH).
        extra_config: SunPKCS11 configuration lines added after the harness's own
        (`--java-p11-config`). cache_dir: where compiled classes go (default
        $XDG_CACHE_HOME/p11tls). java_options: JVM options (e.g. -Djavax.net.debug=all).
        """
        self.java_home = java_home
        self.extra_config = tuple(extra_config)
        self.cache_dir = cache_dir
        self.java_options = tuple(java_options)
        self.start_timeout_s = start_timeout_s
        _check_extra_config(self.extra_config, self.name)
        self._jdk: JDK | None = None
        self._classes: Path | None = None
        self._jvms: dict[_ConfigKey, _WarmJVM] = {}
        # (module, token, PIN) -> (login error, CKR): never the same PIN twice, even
        # when the environment (say, an interposer configuration) differs
        self._refused: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._broken: dict[_ConfigKey, HarnessError] = {}  # the provider did not start
        self._lock = threading.Lock()
        self._jvm_count = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> JavaClient:
        return cls(java_home=settings.java_home, extra_config=settings.java_p11_config)

    # -- Client API ---------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        try:
            self.jdk()
        except ToolMissing as exc:
            return str(exc)
        return None

    def version(self) -> str:
        jdk = self.jdk()
        return f"{jdk.version} ({jdk.runtime or 'Java'}, {jdk.home})"

    def components(self) -> dict[str, str | None]:
        try:
            return {"java": first_version(self.jdk().version)}
        except ToolMissing:
            return {"java": None}

    def jdk(self) -> JDK:
        if self._jdk is None:
            self._jdk = find_jdk(self.java_home)
        return self._jdk

    def classes(self) -> Path:
        """The compiled client (compiled on first use)."""
        if self._classes is None:
            self._classes = build_classes(self.jdk(), find_java_sources(), self.cache_dir)
        return self._classes

    def p11_config(self, module: Path, slot: SlotRef) -> str:
        """The SunPKCS11 configuration text for one module and slot."""
        library = str(module)
        if re.search(r"\s", library):
            library = f'"{library}"'
        lines = [
            f"name = p11tls-{self.marker}",
            f"library = {library}",
            slot.config_line,
            *self._variant_config(),
            *self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def _variant_config(self) -> list[str]:
        return []

    def check_extra_config(self) -> None:
        """Let SunPKCS11 parse the --java-p11-config lines once, before any case:
        with a library that does not exist it stops at the library when the
        lines are good, at the first bad line otherwise. No module is loaded."""
        if not self.extra_config:
            return
        with tempfile.TemporaryDirectory(prefix="p11tls-java-check-") as tmp:
            library = Path(tmp) / "none.so"
            config = Path(tmp) / "check.cfg"
            head = ["name = p11tls-check", f"library = {library}", "slot = 0"]
            config.write_text("\n".join([*head, *self.extra_config]) + "\n")
            proc = subprocess.run(
                [str(self.jdk().java), *self.java_options, "-cp", str(self.classes()),
                 MAIN_CLASS, str(config)], stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=self.start_timeout_s, check=False)
        error = decode_answer(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip()
                              else "fatal")[1].get("error", proc.stderr.strip()[-200:])
        if str(library) not in error:
            where = re.search(r"line (\d+)", error)
            index = int(where.group(1)) - len(head) - 1 if where else -1
            line = f" in {self.extra_config[index]!r}" if 0 <= index < len(
                self.extra_config) else ""
            reason = error.rsplit("ConfigurationException: ", 1)[-1].split(" <- ")[0]
            reason = re.sub(r", line \d+$", "", reason)
            raise ConfigError(f"--java-p11-config: SunPKCS11 refuses it: {reason}{line}")

    def handshake(self, job: HandshakeJob) -> ClientResult:
        with self._lock:
            return self._handshake(job)

    def close(self) -> None:
        with self._lock:
            for jvm in self._jvms.values():
                jvm.stop()
            self._jvms.clear()

    # -- internals ------------------------------------------------------------------
    def _handshake(self, job: HandshakeJob) -> JavaResult:
        start = time.monotonic()
        key = _ConfigKey(str(job.module), job.token_label, job.pin,
                         tuple(sorted(job.env.items())))
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log_path, "a") as log:
            log.write(f"# {self.name}: {job.tls.value} to {job.host}:{job.port}, key "
                      f"{job.key_label} (id {job.key_id_hex}), module {job.module}, "
                      f"token {job.token_label!r}\n")

        def result(**kw: object) -> JavaResult:
            return JavaResult(client=self.name, log_path=job.log_path,
                              duration_s=time.monotonic() - start, **kw)  # type: ignore[arg-type]

        if key in self._broken:
            raise self._broken[key]
        if key.login in self._refused:
            error, ckr = self._refused[key.login]
            self._log(job, f"login was refused earlier in this session; the PIN is not sent "
                           f"again: {error}")
            return result(returncode=1, timed_out=False, error=_error_text(ckr, error),
                          ckr=ckr or None)

        jvm = self._jvms.get(key)
        if jvm is not None and not jvm.alive():
            self._log(job, f"the warm JVM (pid {jvm.pid}) had ended since the last case "
                           f"({jvm.exit_status()}); starting a fresh one. Its last output:\n"
                           + tail(jvm.log_path, 20))
            self._drop(key)
            jvm = None
        if jvm is None:
            jvm = self._start(key, job)
            login = self._ask(jvm, key, job, encode_request("login", pin=job.pin,
                                                            log=job.log_path),
                              self.start_timeout_s)
            if isinstance(login, JavaResult):
                return result(**_fields(login))
            verb, fields = login
            if verb != "ok":
                ckr, error = fields.get("ckr", ""), fields.get("error", "login failed")
                self._refused[key.login] = (error, ckr)
                self._log(job, f"answer: {verb} ckr={ckr} error={error}")
                self._drop(key)
                return result(returncode=1, timed_out=False, error=_error_text(ckr, error),
                              ckr=ckr or None)

        request = encode_request(
            "handshake", host=job.host, port=job.port, tls=job.tls.value,
            label=job.key_label, id=job.key_id_hex, cert=job.cert_pem, ca=job.ca_pem,
            timeout_ms=int(job.timeout_s * 1000), log=job.log_path,
        )
        answer = self._ask(jvm, key, job, request, job.timeout_s + self.answer_grace_s)
        if isinstance(answer, JavaResult):
            return result(**_fields(answer))
        verb, fields = answer
        self._log(job, f"answer: {verb} " + " ".join(f"{k}={v}" for k, v in fields.items()))
        if verb == "ok":
            return result(returncode=0, timed_out=False, protocol=fields.get("protocol"),
                          cipher=fields.get("cipher"),
                          handshake_ms=float(fields["ms"]) if "ms" in fields else None)
        ckr = fields.get("ckr", "")
        return result(
            returncode=1, timed_out=fields.get("timeout") == "1",
            error=_error_text(ckr, fields.get("error", verb)), ckr=ckr or None,
            protocol=fields.get("protocol") or None, cipher=fields.get("cipher") or None,
        )

    def _ask(self, jvm: _WarmJVM, key: _ConfigKey, job: HandshakeJob, request: str,
             timeout: float) -> tuple[str, dict[str, str]] | JavaResult:
        """Send one request; a JVM that dies or hangs fails this case and is dropped."""
        offset = jvm.log_size()
        try:
            return jvm.ask(request, timeout)
        except _Died:
            status = jvm.exit_status()
            jvm.drain(2.0)  # the crash banner arrives through stdout
            output = jvm.output_since(offset)
            last_words = _last_words(output, job.log_path)
            self._log(job, f"the JVM (pid {jvm.pid}) died during this case ({status}); "
                           f"its output meanwhile ({jvm.log_path.name}):\n"
                           + (output.rstrip() or "(none)"))
            self._drop(key)
            return JavaResult(client=self.name, returncode=jvm.proc.returncode,
                              timed_out=False, duration_s=0.0, log_path=job.log_path,
                              error=f"JVM died ({status}): {last_words}")
        except _NoAnswer:
            self._log(job, f"no answer from the JVM (pid {jvm.pid}) within {timeout:.0f} s: "
                           "killing its process group")
            kill_group(jvm.proc)
            self._drop(key)
            return JavaResult(client=self.name, returncode=None, timed_out=True,
                              duration_s=0.0, log_path=job.log_path,
                              error=f"timeout: no answer from the JVM within {timeout:.0f} s")

    def _start(self, key: _ConfigKey, job: HandshakeJob) -> _WarmJVM:
        jdk, classes = self.jdk(), self.classes()
        env = base_env(job.env)
        env["JAVA_HOME"] = str(jdk.home)
        try:
            slot = find_slot(job.module, job.token_label, env)
        except TokenError as exc:
            self._broken[key] = exc
            raise
        config_dir = Path(tempfile.mkdtemp(prefix="p11tls-java-"))
        config = config_dir / "sunpkcs11.cfg"
        config.write_text(self.p11_config(job.module, slot))
        self._jvm_count += 1
        jvm_log = job.log_path.parent / f"{self.name}-jvm-{os.getpid()}-{self._jvm_count}.log"
        with open(jvm_log, "w") as log:
            log.write(f"# SunPKCS11 configuration {config}:\n{config.read_text()}")
        # A crash report (say, a segfault in the PKCS#11 module) lands next to the logs.
        error_file = jvm_log.parent / f"{self.name}-hs_err_pid%p.log"
        argv = [str(jdk.java), f"-XX:ErrorFile={error_file}", *self.java_options,
                "-cp", str(classes), MAIN_CLASS, str(config)]
        jvm = _WarmJVM(argv, env, jvm_log, config_dir)
        self._log(job, f"started JVM pid {jvm.pid} ({jvm_log.name}) with:\n{config.read_text()}")
        try:
            verb, fields = jvm.receive(self.start_timeout_s)
        except (_Died, _NoAnswer):
            kill_group(jvm.proc)
            jvm.stop()
            raise HarnessError(
                f"the Java client did not start ({jvm.exit_status()}): "
                f"{tail(jvm_log, 5) or 'no output'}"
            ) from None
        if verb != "ready":
            jvm.stop()
            error = ConfigError(
                f"SunPKCS11 could not be configured for {job.module} (slot of token "
                f"{job.token_label!r}): {fields.get('error', verb)}; configuration:\n"
                f"{self.p11_config(job.module, slot)}check --java-p11-config"
            )
            self._broken[key] = error
            raise error
        self._jvms[key] = jvm
        return jvm

    def _drop(self, key: _ConfigKey) -> None:
        jvm = self._jvms.pop(key, None)
        if jvm is not None:
            if jvm.alive():
                jvm.stop()
            else:
                shutil.rmtree(jvm.config_dir, ignore_errors=True)

    @staticmethod
    def _log(job: HandshakeJob, text: str) -> None:
        with open(job.log_path, "a") as log:
            log.write(f"# {text}\n")

    def jvm_pids(self) -> list[int]:
        """Process ids of the running warm JVMs (for tests and diagnostics)."""
        return [jvm.pid for jvm in self._jvms.values() if jvm.alive()]


class JavaNoCombinedClient(JavaClient):
    """SunPKCS11 with every combined hash-and-sign mechanism disabled (seed 001 workaround)."""

    name = "java-nocombined"
    marker = "java_nocombined"

    def __init__(self, java_home: Path | str | None = None, extra_config: Sequence[str] = (),
                 **kwargs: object) -> None:
        # SunPKCS11 allows disabledMechanisms once: the user's names join ours.
        own = [line for line in extra_config
               if not line.strip().startswith("disabledMechanisms")]
        self.user_disabled = tuple(
            name for line in extra_config if line.strip().startswith("disabledMechanisms")
            for name in re.findall(r"\bCKM_\w+", line))
        super().__init__(java_home, own, **kwargs)  # type: ignore[arg-type]

    def _variant_config(self) -> list[str]:
        names = dict.fromkeys((*COMBINED_MECHANISMS, *self.user_disabled))
        return ["disabledMechanisms = {", *(f"  {m}" for m in names), "}"]


def _check_extra_config(lines: tuple[str, ...], client: str) -> None:
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ConfigError(f"--java-p11-config takes one line per option, got {line!r}")
        keyword = re.split(r"[\s=]", line.strip(), maxsplit=1)[0]
        if keyword in _OWN_KEYWORDS:
            raise ConfigError(
                f"--java-p11-config {line!r}: the harness sets {keyword} itself "
                "(from --p11-module and the token label)"
            )
        if keyword == "enabledMechanisms" and "KeyStore" not in line:
            raise ConfigError(
                f"--java-p11-config {line!r}: enabledMechanisms must include the "
                "pseudo-mechanism KeyStore, else SunPKCS11 offers no KeyStore and no key"
            )


def _last_words(jvm_output: str, case_log: Path) -> str:
    """One line saying what the JVM last said before it died."""
    crash = re.search(r"^#\s+((?:SIG[A-Z]+|Internal Error|Out of Memory)\b.*)$", jvm_output,
                      re.MULTILINE)
    if crash:
        return crash.group(1).strip()
    lines = [ln for ln in jvm_output.splitlines() if ln.strip(" #")]
    if not lines:  # nothing on its own stderr: what it wrote for this case
        lines = [ln for ln in tail(case_log, 50).splitlines()
                 if ln.strip() and not ln.startswith("# ")]
    return lines[-1].strip() if lines else "no output"


def _error_text(ckr: str, error: str) -> str:
    # Like the other clients: the CKR code alone when the token returned one
    # (the Java exception chain is in the case log), else Java's own words.
    return ckr if ckr else error[:300]


def _fields(result: JavaResult) -> dict[str, object]:
    return {k: getattr(result, k) for k in ("returncode", "timed_out", "error", "ckr")}
