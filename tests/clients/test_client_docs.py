"""docs/clients.md's declarative client, run as written: a real handshake on
the session's token through the interposer; and the declaration's own checks
(a PIN in argv, an unknown field) refuse bad entries when the class is defined."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.clients.command import CommandClient
from harness.errors import ConfigError
from harness.matrix.cases import Case
from harness.matrix.keys import KEYS, Provisioning
from harness.tls.version import TLSVersion

DOC = Path(__file__).parents[2] / "docs" / "clients.md"


def example_class() -> type[CommandClient]:
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert block, "docs/clients.md has no python example"
    namespace: dict[str, object] = {}
    exec(compile(block.group(1), str(DOC), "exec"), namespace)  # noqa: S102 - our own docs
    found = [v for v in namespace.values()
             if isinstance(v, type) and issubclass(v, CommandClient) and v is not CommandClient]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("tls", list(TLSVersion), ids=lambda t: t.marker)
def test_the_documented_client_handshakes(p11tls_runner, tls):
    cls = example_class()
    client = cls()
    if client.unavailable_reason():
        pytest.skip(client.unavailable_reason())
    p11tls_runner.clients[cls.name] = client  # registered for this runner only
    case = Case(cls.name, KEYS["p256"], Provisioning.GENERATE, tls)
    record = p11tls_runner.run(case)
    assert record.outcome == "ok", record.error
    assert record.sign["mechanism"] == "CKM_ECDSA" and record.sign["rv"] == "CKR_OK"
    assert p11tls_runner.pin not in Path(record.logs["client"]).read_text()
    assert cls.marker in case.markers or cls.name.replace("-", "_") in case.markers


def test_a_foreign_ca_fails_the_documented_client(p11tls_runner, tmp_path):
    from client_checks import foreign_ca, run_direct

    cls = example_class()
    if cls().unavailable_reason():
        pytest.skip(cls().unavailable_reason())
    p11tls_runner.clients[cls.name] = cls()
    p11tls_runner.recorder(cls.name)
    assert not run_direct(p11tls_runner, cls.name, tmp_path / "no",
                          client_ca=foreign_ca(tmp_path / "ca")).seen.accepted
    assert run_direct(p11tls_runner, cls.name, tmp_path / "yes").seen.accepted


def test_pin_in_argv_is_refused_when_declared():
    with pytest.raises(ConfigError, match="would put the PIN on the command line"):
        type("Leaky", (CommandClient,), {"name": "leaky", "marker": "leaky", "program": "x",
                                         "argv": ("{program}", "--pin", "{pin}")})


def test_unknown_field_is_refused_when_declared():
    with pytest.raises(ConfigError, match=r"unknown field \{keyfile\}"):
        type("Typo", (CommandClient,), {"name": "typo", "marker": "typo", "program": "x",
                                        "argv": ("{program}", "{keyfile}")})
    # negative control: the same without the typo is a client
    ok = type("Fine", (CommandClient,), {"name": "fine", "marker": "fine", "program": "x",
                                         "argv": ("{program}", "{key_uri}")})
    assert ok().unavailable_reason() == "x not found: install it"


def test_clients_do_not_import_the_settings():
    import subprocess
    import sys

    code = ("import sys, harness.clients; "
            "print('harness.run.config' in sys.modules, 'harness.clients' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True"]  # the second word is the control: the import happened
