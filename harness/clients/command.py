"""A client declared by its command line: one process per handshake.

A subclass of CommandClient sets class attributes instead of writing code
(docs/clients.md has an example that the tests run):

    program       the executable, looked up on PATH
    install_hint  what to install when it is missing
    argv          the command template; fields: {program} {host} {port} {tls}
                  {module} {key_uri} {cert} {ca} {pin_file} {token} {key_label}
    tls_words     how the tool spells the TLS versions ({tls}); default 1.2 / 1.3
    env           extra environment, same fields plus {pin}
    stdin         what the tool reads on standard input, same fields plus {pin}
    version_argv  the command printing its version (first dotted number used)
    component     the harness.versions component that version is (facts keyed to it)

The PIN may reach the tool through `env`, `stdin` or `{pin_file}` (a 0600 file
in a private directory removed after the handshake), never argv: a `{pin}` in
argv is refused when the class is defined.
"""

from __future__ import annotations

import shutil
import string
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from harness.clients.base import Client, ClientResult, HandshakeJob
from harness.errors import ConfigError
from harness.process import base_env, run_logged, tool_version
from harness.versions import command_version

FIELDS = frozenset({"program", "host", "port", "tls", "module", "key_uri", "cert", "ca",
                    "pin_file", "token", "key_label"})
SECRET_FIELDS = frozenset({"pin"})  # env and stdin only


class CommandClient(Client):
    program: ClassVar[str] = ""
    install_hint: ClassVar[str] = ""
    argv: ClassVar[tuple[str, ...]] = ()
    tls_words: ClassVar[Mapping[str, str]] = {"1.2": "1.2", "1.3": "1.3"}
    env: ClassVar[Mapping[str, str]] = {}
    stdin: ClassVar[str] = ""
    version_argv: ClassVar[tuple[str, ...]] = ("{program}", "--version")
    component: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not (cls.name and cls.marker and cls.program and cls.argv):
            raise ConfigError(f"client {cls.__name__}: name, marker, program and argv are "
                              "required")
        _check_fields(cls.__name__, "argv", cls.argv, FIELDS)
        _check_fields(cls.__name__, "env", tuple(cls.env.values()), FIELDS | SECRET_FIELDS)
        _check_fields(cls.__name__, "stdin", (cls.stdin,), FIELDS | SECRET_FIELDS)

    def unavailable_reason(self) -> str | None:
        if shutil.which(self.program) is None:
            return f"{self.program} not found: {self.install_hint or 'install it'}"
        return None

    def _version_argv(self) -> list[str]:
        return [part.format(program=self.program) for part in self.version_argv]

    def version(self) -> str:
        return tool_version(self._version_argv())

    def components(self) -> dict[str, str | None]:
        if self.component is None:
            return {}
        return {self.component: command_version(self._version_argv())}

    def handshake(self, job: HandshakeJob) -> ClientResult:
        with tempfile.TemporaryDirectory(prefix=f"p11tls-{self.name}-") as private:
            pin_file = Path(private) / "pin"
            pin_file.touch(mode=0o600)
            pin_file.write_text(job.pin)
            values = {
                "program": shutil.which(self.program) or self.program, "host": job.host,
                "port": str(job.port), "tls": self.tls_words[job.tls.value],
                "module": str(job.module), "key_uri": job.key_uri, "cert": str(job.cert_pem),
                "ca": str(job.ca_pem), "pin_file": str(pin_file), "token": job.token_label,
                "key_label": job.key_label,
            }
            argv = [part.format(**values) for part in self.argv]
            secret = {**values, "pin": job.pin}
            env = base_env({**job.env, **{k: v.format(**secret) for k, v in self.env.items()}})
            proc = run_logged(argv, env=env, log_path=job.log_path, timeout=job.timeout_s,
                              stdin_data=self.stdin.format(**secret).encode())
        return ClientResult.from_process(self.name, proc)


def _check_fields(client: str, what: str, templates: tuple[str, ...],
                  allowed: frozenset[str]) -> None:
    for template in templates:
        for _, name, _, _ in string.Formatter().parse(template):
            if name is None:
                continue
            if name in SECRET_FIELDS and name not in allowed:
                raise ConfigError(f"client {client}: {{{name}}} in {what} would put the PIN "
                                  "on the command line; use env, stdin or {pin_file}")
            if name not in allowed:
                raise ConfigError(f"client {client}: unknown field {{{name}}} in {what}; "
                                  f"allowed: {', '.join(sorted(allowed))}")
