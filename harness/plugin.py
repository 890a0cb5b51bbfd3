"""pytest plugin: options, markers, the matrix parametrization, fixtures and
the end-of-run report. All real work happens in the library (runner.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from harness.clients import CLIENTS, check_clients
from harness.compare import write_reports
from harness.config import OPTIONS, Settings, resolve
from harness.errors import HarnessError
from harness.expectations import CaseExpectations, ExpectedFailure
from harness.matrix import cases
from harness.process import tool_version
from harness.profile import Profile, load_profile
from harness.record import HandshakeRecord, write_results
from harness.report import terminal_matrix
from harness.token import check_login

MARKERS = {
    "tls12": "TLS 1.2 handshake cases",
    "tls13": "TLS 1.3 handshake cases",
    "rsa": "RSA keys",
    "ecdsa": "ECDSA keys (P-256, P-384, P-521)",
    "eddsa": "EdDSA keys (Ed25519)",
    "generate": "keys generated on the token (C_GenerateKeyPair)",
    "import": "keys imported into the token (C_CreateObject)",
    **{cls.marker: f"the {name} client" for name, cls in CLIENTS.items()},
}
RECORD_PROPERTY = "p11tls_record"
settings_key = pytest.StashKey[Settings]()
token_key = pytest.StashKey[dict[str, Any]]()  # the user's token, as check_login saw it
profile_key = pytest.StashKey[Optional[Profile]]()  # the emulation profile, parsed once


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("p11tls", "PKCS#11 TLS client-auth harness")
    for option in OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        env = f" [env {option.env}]" if option.env else ""
        default = f" (default: {option.default})" if option.default else ""
        if option.repeatable:
            group.addoption(flag, dest=option.name, action="append", default=None,
                            help=option.help + " (repeatable)")
            parser.addini(option.name, option.help, type="linelist", default=[])
            continue
        if option.flag:
            group.addoption(flag, dest=option.name, action="store_const", const="yes",
                            default=None, help=option.help + env)
        else:
            group.addoption(flag, dest=option.name, default=None,
                            help=option.help + env + default)
        parser.addini(option.name, option.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    cli = {o.name: config.getoption(o.name) for o in OPTIONS}
    ini = {o.name: config.getini(o.name) for o in OPTIONS}
    try:
        settings = resolve(cli, ini, os.environ)
        # a bad profile is a usage error before anything runs
        config.stash[profile_key] = load_profile(settings.profile) if settings.profile else None
        check_clients(settings)
        if settings.module is not None and not hasattr(config, "workerinput"):
            # Module, token and PIN checked once, before any test and before
            # xdist workers start (each logs in on its own): a wrong PIN
            # reaches the token once and stops the run with one line.
            config.stash[token_key] = check_login(
                settings.module, settings.token_label or "", settings.pin or "")
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not settings.reports.is_absolute():
        settings = Settings(**{**settings.__dict__,
                               "reports": config.invocation_params.dir / settings.reports})
    config.stash[settings_key] = settings
    if not hasattr(config, "workerinput"):  # only the controller writes reports
        config.pluginmanager.register(RecordCollector(settings), "p11tls-records")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Ed25519 cases last: libp11 cannot enumerate a token once an Ed25519 key is
    # on it, and on a user's token (one token for all keys) that would break the
    # openssl-engine cases that happen to run after it.
    items.sort(key=lambda item: item.get_closest_marker("eddsa") is not None)


def _java_version(settings: Settings) -> str:
    from harness.clients.java import find_jdk

    try:
        jdk = find_jdk(settings.java_home)
    except HarnessError as exc:
        return f"Java: {exc}"
    return f"Java {jdk.version} ({jdk.home})"


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[settings_key]
    if settings.module is None:
        module = "embedded default: throw-away SoftHSM2 token"
        module += f" ({tool_version(['softhsm2-util', '--version'])})"
    else:
        token = config.stash.get(token_key, {})
        module = (f"{settings.module} ({token.get('library', '?')}), token "
                  f"{settings.token_label!r} ({token.get('model', '?')} by "
                  f"{token.get('manufacturer', '?')}, firmware {token.get('firmware', '?')})")
    try:
        from importlib.metadata import version

        pkcs11_version = version("python-pkcs11")
    except Exception:  # noqa: BLE001 - a header must never break the run
        pkcs11_version = "unknown"
    versions = [tool_version(["openssl", "version"]), tool_version(["gnutls-cli", "--version"])]
    if any(name.startswith("java") for name in settings.clients):
        versions.append(_java_version(settings))
    clients = "; ".join([*versions, f"python-pkcs11 {pkcs11_version}"])
    lines = [f"p11tls module: {module}", f"p11tls clients: {clients}"]
    profile = config.stash[profile_key]
    if profile is not None:
        lines.append(f"p11tls profile: {profile.label} -- an emulation, "
                     "not the device")
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "p11_case" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash[settings_key]
    profile = metafunc.config.stash[profile_key]
    expectations = CaseExpectations(profile=profile.name if profile else None)
    params = []
    for case in cases(list(settings.clients), settings.keys):
        marks = [getattr(pytest.mark, m) for m in case.markers]
        reason = expectations.failure_reason(case)
        if reason:
            marks.append(pytest.mark.xfail(reason=reason, strict=True, raises=ExpectedFailure))
        params.append(pytest.param(case, id=case.case_id, marks=marks))
    metafunc.parametrize("p11_case", params)


@pytest.fixture(scope="session")
def p11_settings(pytestconfig: pytest.Config) -> Settings:
    """The resolved harness settings (module, token, PIN, reports directory)."""
    return pytestconfig.stash[settings_key]


@pytest.fixture(scope="session")
def p11_runner(p11_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's MatrixRunner: token (throw-away SoftHSM2 by default), CA, keys.

    Each pytest-xdist worker gets its own. A bad module, token label or PIN
    ends the whole run with one line: the PIN is never tried twice.
    """
    from harness.runner import MatrixRunner

    try:
        runner = MatrixRunner(p11_settings, workdir=tmp_path_factory.mktemp("p11tls"))
    except HarnessError as exc:
        pytest.exit(f"p11tls: {exc}", returncode=3)
    yield runner
    runner.close()


@pytest.fixture
def p11_record(request: pytest.FixtureRequest) -> Any:
    """Call with a HandshakeRecord to put it into reports/results.json."""

    def record(handshake: HandshakeRecord) -> None:
        request.node.user_properties.append((RECORD_PROPERTY, handshake.to_json()))

    return record


class RecordCollector:
    """Collects HandshakeRecords in the controller (xdist workers' records too,
    as they travel in report.user_properties) and writes the reports at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.records: list[HandshakeRecord] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == RECORD_PROPERTY and report.when == "call" and isinstance(value, dict):
                self.records.append(HandshakeRecord(**value))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.records:
            write_results(self.records, self.settings.reports / "results.json")
            write_reports(self.records, self.settings.reports)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.records:
            return
        terminalreporter.section("PKCS#11 TLS client-auth matrix")
        terminalreporter.write_line(terminal_matrix(self.records))
        reports = self.settings.reports
        terminalreporter.write_line(
            f"reports: {reports / 'results.json'}, {reports / 'matrix.html'}, "
            f"{reports / 'matrix.md'}")
