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

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.clients.base import Client, ClientOptions, ClientResult, HandshakeJob
from harness.clients.java.build import MAIN_CLASS, build_classes, find_java_sources
from harness.clients.java.jdk import JDK, find_jdk
from harness.clients.java.jvm import (
    JVMDied,
    NoAnswer,
    SlotRef,
    WarmJVM,
    decode_answer,
    encode_request,
    find_slot,
)
from harness.errors import ConfigError, HarnessError, TokenError, ToolMissing
from harness.process import base_env, kill_group, tail
from harness.versions import first_version

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


# What P11TlsClient answers when no KeyStore entry holds the case's certificate.
KEY_NOT_SEEN = "no private key with certificate"


@dataclass(frozen=True)
class JavaResult(ClientResult):
    """A ClientResult with what the JVM itself reported."""

    protocol: str | None = None  # negotiated, as JSSE saw it: "TLSv1.2"
    cipher: str | None = None
    ckr: str | None = None  # CKR_ code from a PKCS11Exception in the chain
    handshake_ms: float | None = None  # measured inside the JVM


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
        jdk_suffix: str | None = None,
        read_only: bool = False,
    ) -> None:
        """java_home: a JDK home or its bin/java (else $JAVA_HOME, else PATH).
        extra_config: SunPKCS11 configuration lines added after the harness's own
        (`--java-p11-config`). cache_dir: where compiled classes go (default
        $XDG_CACHE_HOME/p11tls). java_options: JVM options (e.g. -Djavax.net.debug=all).
        jdk_suffix: for a JDK other than the default one, the client is named
        `java@SUFFIX` (jdk.jdk_variants); its marker stays `java`.
        read_only: a read-only run. SunPKCS11 has no option for read-only
        sessions: it opens read-write ones unless the token says
        CKF_WRITE_PROTECTED (SessionManager), so through the recording
        interposer the JVM is shown a write-protected token
        (`token_write_protected yes`) and opens read-only sessions.
        """
        if jdk_suffix:
            self.name = f"{type(self).name}@{jdk_suffix}"
        self.java_home = java_home
        self.extra_config = tuple(extra_config)
        self.cache_dir = cache_dir
        self.java_options = tuple(java_options)
        self.start_timeout_s = start_timeout_s
        self.read_only = read_only
        _check_extra_config(self.extra_config, self.name)
        self._jdk: JDK | None = None
        self._classes: Path | None = None
        self._jvms: dict[_ConfigKey, WarmJVM] = {}
        # (module, token, PIN) -> (login error, CKR): never the same PIN twice, even
        # when the environment (say, an interposer configuration) differs
        self._refused: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._broken: dict[_ConfigKey, HarnessError] = {}  # the provider did not start
        self._lock = threading.Lock()
        self._jvm_count = 0

    @classmethod
    def from_options(cls, options: ClientOptions) -> JavaClient:
        return cls(java_home=options.java_home, extra_config=options.java_p11_config,
                   read_only=options.read_only)

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
    def _handshake(self, job: HandshakeJob, may_restart: bool = True) -> JavaResult:
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
        warm = jvm is not None
        if jvm is not None and not jvm.alive():
            self._log(job, f"the warm JVM (pid {jvm.pid}) had ended since the last case "
                           f"({jvm.exit_status()}); starting a fresh one. Its last output:\n"
                           + tail(jvm.log_path, 20))
            self._drop(key)
            jvm, warm = None, False
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
        if warm and may_restart and KEY_NOT_SEEN in fields.get("error", ""):
            # Some modules list only the objects present when this process
            # initialised them (OpenSC's sc-hsm: keys made since stay invisible,
            # a KeyStore reload included): a fresh JVM sees them. Once per case.
            self._log(job, f"the warm JVM (pid {jvm.pid}) does not see key {job.key_label} "
                           "even after reloading its KeyStore: starting a fresh JVM, once")
            self._drop(key)
            return self._handshake(job, may_restart=False)
        return result(
            returncode=1, timed_out=fields.get("timeout") == "1",
            error=_error_text(ckr, fields.get("error", verb)), ckr=ckr or None,
            protocol=fields.get("protocol") or None, cipher=fields.get("cipher") or None,
        )

    def _ask(self, jvm: WarmJVM, key: _ConfigKey, job: HandshakeJob, request: str,
             timeout: float) -> tuple[str, dict[str, str]] | JavaResult:
        """Send one request; a JVM that dies or hangs fails this case and is dropped."""
        offset = jvm.log_size()
        try:
            return jvm.ask(request, timeout)
        except JVMDied:
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
        except NoAnswer:
            self._log(job, f"no answer from the JVM (pid {jvm.pid}) within {timeout:.0f} s: "
                           "killing its process group")
            kill_group(jvm.proc)
            self._drop(key)
            return JavaResult(client=self.name, returncode=None, timed_out=True,
                              duration_s=0.0, log_path=job.log_path,
                              error=f"timeout: no answer from the JVM within {timeout:.0f} s")

    def _start(self, key: _ConfigKey, job: HandshakeJob) -> WarmJVM:
        jdk, classes = self.jdk(), self.classes()
        env = base_env(job.env)
        env["JAVA_HOME"] = str(jdk.home)
        config_dir = Path(tempfile.mkdtemp(prefix="p11tls-java-"))
        if self.read_only:
            env.update(write_protected(env, config_dir))
        try:
            slot = find_slot(job.module, job.token_label, env)
        except TokenError as exc:
            self._broken[key] = exc
            raise
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
        jvm = WarmJVM(argv, env, jvm_log, config_dir)
        self._log(job, f"started JVM pid {jvm.pid} ({jvm_log.name}) with:\n{config.read_text()}")
        try:
            verb, fields = jvm.receive(self.start_timeout_s)
        except (JVMDied, NoAnswer):
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


def write_protected(env: dict[str, str], directory: Path) -> dict[str, str]:
    """The interposer configuration of `env` with `token_write_protected yes`
    added, as a copy in `directory` ({} without the interposer: --p11-no-record)."""
    conf = env.get("P11TLS_INTERPOSER_CONF")
    if not conf:
        return {}
    copy = directory / "interposer-read-only.conf"
    copy.write_text(Path(conf).read_text().rstrip("\n") + "\ntoken_write_protected yes\n")
    return {"P11TLS_INTERPOSER_CONF": str(copy)}


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
