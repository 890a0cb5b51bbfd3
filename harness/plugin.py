"""pytest plugin: options, markers, the matrix parametrization, fixtures and
the end-of-run report. All real work happens in the library (runner.py).

Opt-in: installed, the plugin is loaded by every pytest run in the
environment, but it only acts (settings, header probes, the token check,
reports) when asked: a `--p11-*`/`--java*` option or ini key, `-p p11tls`, or
a test marked `p11tls` (the project's own matrix test is). A test that merely
uses a fixture of the same name never makes it act, and its fixtures are
namespaced (p11tls_case, p11tls_runner, p11tls_settings, p11tls_record).
PKCS11_* variables alone, meant for other tools, never make it log in.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from harness.clients import CLIENTS, check_clients, make_client
from harness.clients.java import JavaClient, find_jdk
from harness.errors import HarnessError
from harness.explain import masking as pin_masking
from harness.interposer.profile import Profile, load_profile
from harness.matrix.cases import cases
from harness.matrix.record import IMPORT_UNSUPPORTED, HandshakeRecord
from harness.process import install_signal_handlers, tool_version
from harness.reports.files import write_reports, write_results
from harness.reports.progress import SlowCases, matrix_case
from harness.reports.rundir import new_run_id, publish, run_dir
from harness.reports.terminal import fit_lines, terminal_matrix
from harness.run.config import OPTIONS, Settings, resolve
from harness.run.lab import LabModuleMissing
from harness.run.runner import STOPPED, MatrixRunner
from harness.token.existing_keys import writes_in
from harness.token.journal import journal_dir, scan_journals
from harness.token.locking import TokenLock, token_key
from harness.token.probe import check_login, describe_token, existing_specs
from harness.token.run_tokens import emulated_module, lock_token, refuse_fixed_slot
from harness.token.session import exit_if_in_flight
from harness.verdict.predict import prediction_summary

MARKER = "p11tls"  # a matrix test: the plugin acts for it
PLUGIN_NAMES = ("p11tls", "harness.plugin")  # -p NAME asks for it
MARKERS = {
    MARKER: "a p11tls matrix test (the plugin acts for it)",
    "tls12": "TLS 1.2 handshake cases",
    "tls13": "TLS 1.3 handshake cases",
    "rsa": "RSA keys",
    "ecdsa": "ECDSA keys (P-256, P-384, P-521)",
    "eddsa": "EdDSA keys (Ed25519)",
    "generate": "keys generated on the token (C_GenerateKeyPair)",
    "import": "keys imported into the token (C_CreateObject)",
    "existing": "keys already on the token, used read-only (--p11-existing, --p11-key)",
    **{cls.marker: f"the {name} client" for name, cls in CLIENTS.items()},
}
RECORD_PROPERTY = "p11tls_record"
settings_key = pytest.StashKey[Settings]()
token_info_key = pytest.StashKey[dict[str, Any]]()  # the user's token, as check_login saw it
identity_key = pytest.StashKey[dict[str, Any]]()  # the real token's identity (lock, journals)
profile_key = pytest.StashKey[Optional[Profile]]()  # the emulation profile, parsed once
checked_key = pytest.StashKey[bool]()  # the one login check is done (or not needed)
header_key = pytest.StashKey[bool]()  # the p11tls header lines were shown
bad_key = pytest.StashKey[bool]()  # matrix tests were asked for, their settings are bad
existing_key = pytest.StashKey[tuple[Any, ...]]()  # read-only mode: the keys on the token
shared_key = pytest.StashKey[Path]()  # xdist: a directory the controller and workers share
lab_missing_key = pytest.StashKey[str]()  # --p11-lab names a module not installed: the skip
# Tests using these are matrix tests: they make the plugin act. The first two
# need the token, so the one login check runs before them.
MATRIX_FIXTURES = ("p11tls_case", "p11tls_runner", "p11tls_settings", "p11tls_record")
TOKEN_FIXTURES = ("p11tls_case", "p11tls_runner")
MATRIX_FLAG = "matrix-collected"  # in the shared directory: a worker collected matrix tests
run_id_key = pytest.StashKey[str]()  # this run's id (reports/runs/<id>), shared with workers
lock_key = pytest.StashKey[TokenLock]()  # the controller's lock on a named token
runner_key = pytest.StashKey[Any]()  # this process's MatrixRunner, cleaned before reports
session_key = pytest.StashKey[pytest.Session]()
asked_key = pytest.StashKey[bool]()  # matrix tests (marked, or the plugin asked for) collected


NOT_ASKED = ("the p11tls plugin acts only when asked: mark the test `@pytest.mark.p11tls`, "
             "give a --p11-* option or ini key, or run pytest with -p p11tls")


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
    if _explicit(config):
        try:
            _activate(config)
        except LabModuleMissing as exc:  # one skipped case saying what to install
            config.stash[lab_missing_key] = str(exc)
        except HarnessError as exc:
            raise pytest.UsageError(str(exc)) from None


def _explicit(config: pytest.Config) -> bool:
    """A --p11-*/--java* option or ini key, or `-p p11tls`, was given
    (environment variables, shared with other PKCS#11 tools, do not count)."""
    args = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    for at, arg in enumerate(args):
        if (arg == "-p" and at + 1 < len(args) and args[at + 1] in PLUGIN_NAMES) or (
                arg.startswith("-p") and arg[2:] in PLUGIN_NAMES):
            return True
    for option in OPTIONS:
        if config.getoption(option.name) is not None:
            return True
        if config.getini(option.name) not in (None, "", []):
            return True
    return False


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def _activate(config: pytest.Config) -> Settings:
    """Resolve and check the settings (once); raises HarnessError on bad input."""
    if settings_key in config.stash:
        return config.stash[settings_key]
    cli = {o.name: config.getoption(o.name) for o in OPTIONS}
    ini = {o.name: config.getini(o.name) for o in OPTIONS}
    settings = resolve(cli, ini, os.environ, base=config.invocation_params.dir)
    pin_masking.register(settings.pin)
    # SIGTERM/SIGHUP end the run like Ctrl-C, so the same unwinding cleans the
    # token; later signals wait until it is clean
    install_signal_handlers()
    _run_id(config)
    # a bad profile or client configuration is a usage error before anything runs
    profile = load_profile(settings.profile) if settings.profile else None
    check_clients(settings)
    if _is_controller(config):
        _check_java_config(settings)
    config.stash[profile_key] = profile
    config.stash[settings_key] = settings
    if _is_controller(config):  # only the controller writes reports
        config.pluginmanager.register(RecordCollector(settings, config), "p11tls-records")
    return settings


def _run_id(config: pytest.Config) -> str:
    """This run's id: the controller's, which xdist workers are given."""
    if run_id_key not in config.stash:
        worker = getattr(config, "workerinput", {}).get("p11tls_run_id")
        config.stash[run_id_key] = worker or new_run_id()
    return config.stash[run_id_key]


def _check_java_config(settings: Settings) -> None:
    """--java-p11-config lines parsed by SunPKCS11 once, at start, not per case."""
    if not settings.java_p11_config:
        return

    for name in settings.clients:
        client = make_client(name, settings.client_options())
        if isinstance(client, JavaClient) and client.unavailable_reason() is None:
            client.check_extra_config()
            return


def _check_token_once(config: pytest.Config) -> None:
    """The one login before the first matrix test, in the controller: a wrong
    PIN reaches the token once and stops the run with one line; a token that
    says the next wrong PIN locks it gets no login at all."""
    if config.stash.get(checked_key, False):
        return
    config.stash[checked_key] = True
    settings = config.stash[settings_key]
    if settings.module is None:
        return
    _lock_token(config, settings)
    profile = config.stash.get(profile_key, None)
    identity: dict[str, Any] = config.stash[identity_key]
    journal_key = token_key(identity)
    with tempfile.TemporaryDirectory(prefix="p11tls-check-") as tmp:
        module, env = settings.module, None
        if profile is not None:  # the token as the clients will see it: emulated
            module, env = emulated_module(settings.module, profile, Path(tmp), "check")
        info = check_login(module, settings.token_label or "", settings.pin or "", env,
                           journal_key=journal_key,
                           own=_run_id(config), hint_module=settings.module,
                           read_only=settings.read_only, timeout_s=settings.timeout_s)
    config.stash[token_info_key] = info
    if info.get("pin_warning"):
        _say(config, f"p11tls: warning: {info['pin_warning']}")
    if info.get("leftovers"):
        _say(config, info["leftovers"])
    refuse_fixed_slot(info, allow_overwrite=settings.allow_slot_overwrite,  # as clients see it
                      read_only=settings.read_only)


def _lock_token(config: pytest.Config, settings: Settings) -> None:
    """One run at a time on a named token: the controller holds the lock
    until the run ends (its xdist workers then take turns case by case)."""
    assert settings.module is not None
    label = settings.token_label or ""
    identity = describe_token(settings.module, label,  # without a login, the real module
                              settings.timeout_s)
    config.stash[identity_key] = identity
    config.stash[lock_key] = lock_token(identity, lambda line: _say(config, line))


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    else:
        print(line, file=sys.stderr)


def _say_uncaptured(config: pytest.Config, line: str) -> None:
    """A line to the terminal while a test runs: its output is being captured."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        _say(config, line)
        return
    with capture.global_and_fixture_disabled():
        _say(config, line)


def _start_matrix(config: pytest.Config, token: bool) -> None:
    """Matrix tests were collected: act (if not yet), check the token once."""
    if lab_missing_key in config.stash:
        return
    try:
        settings = _activate(config)
        if settings.read_only:
            _existing_keys(config, settings)  # the one line when the keys could not be read
        if not config.stash.get(header_key, False):  # pytest's header came too early
            config.stash[header_key] = True
            for line in _header_lines(config):
                _say(config, line)
        if token and not config.option.collectonly:
            _check_token_once(config)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reports its collection
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    asked = _explicit(config)
    matrix = [i for i in session.items if any(f in getattr(i, "fixturenames", ())
                                              for f in MATRIX_FIXTURES)
              and (asked or i.get_closest_marker(MARKER) is not None)]
    config.stash[asked_key] = bool(matrix)
    if not matrix and not config.stash.get(bad_key, False):
        return
    token = any(f in getattr(i, "fixturenames", ()) for i in matrix for f in TOKEN_FIXTURES)
    if _is_controller(config):
        _start_matrix(config, token)
        return
    shared = config.workerinput.get("p11tls_shared")  # type: ignore[attr-defined]
    if shared:  # tell the controller, which checks the token before scheduling
        (Path(shared) / MATRIX_FLAG).write_text("token" if token else "settings")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: a directory shared with the workers, for MATRIX_FLAG."""
    config = node.config
    if shared_key not in config.stash:
        config.stash[shared_key] = Path(tempfile.mkdtemp(prefix="p11tls-xdist-"))
    node.workerinput["p11tls_shared"] = str(config.stash[shared_key])
    node.workerinput["p11tls_run_id"] = _run_id(config)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: Any) -> None:
    """xdist controller, before any test is scheduled: the controller does
    not collect, so a worker's flag says whether matrix tests are in the run."""
    shared = node.config.stash.get(shared_key, None)
    flag = shared / MATRIX_FLAG if shared is not None else None
    if flag is not None and flag.exists():
        _start_matrix(node.config, flag.read_text() == "token")


@pytest.hookimpl(trylast=True)  # after every report is written
def pytest_unconfigure(config: pytest.Config) -> None:
    shared = config.stash.get(shared_key, None)
    if shared is not None:
        shutil.rmtree(shared, ignore_errors=True)
    lock = config.stash.get(lock_key, None)
    if lock is not None:
        try:
            if shared is not None:  # a worker that was killed could not clean up
                _clean_after_workers(config)
        finally:
            lock.release()
    session = config.stash.get(session_key, None)
    # a token call that never returned: no C_Finalize at interpreter exit
    exit_if_in_flight(int(session.exitstatus) if session is not None else 1)


def _clean_after_workers(config: pytest.Config) -> None:
    """xdist: remove what workers of this run left (a worker killed before its
    clean-up); its journal names it. In a child process, the lock still ours."""
    import subprocess


    settings = config.stash[settings_key]
    assert settings.module is not None
    runs, _ = scan_journals(journal_dir(config.stash[identity_key]))
    if not any(r.header.get("session") == _run_id(config) for r in runs):
        return
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "harness.commands.cleanup", "--p11-module", str(settings.module),
             "--p11-token-label", settings.token_label or "", "--pin-stdin", "--yes",
             "--session", _run_id(config), "--parent-holds-lock",
             "--timeout", str(settings.timeout_s)],
            input=settings.pin or "", capture_output=True, text=True, check=False,
            timeout=settings.timeout_s * 4 + 30)
    except subprocess.TimeoutExpired:
        _say(config, "p11tls: the clean-up after the workers got no answer from the token "
             "in time: `p11tls cleanup` lists what is left (the journal keeps it)")
        return
    for line in (proc.stdout + proc.stderr).splitlines():
        _say(config, f"p11tls: after the workers: {line}" if not line.startswith("p11tls")
             else line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    """No PIN in a failure report (terminal, junit.xml, xdist): a traceback can
    show any value, a captured log any line."""
    outcome = yield
    report = outcome.get_result()
    if not pin_masking.known():
        return
    if report.longrepr is not None and pin_masking.contains(str(report.longrepr)):
        report.longrepr = pin_masking.mask_text(str(report.longrepr))
    report.sections = [(title, pin_masking.mask_text(text)) for title, text in report.sections]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Ed25519 cases last: libp11 cannot enumerate a token once an Ed25519 key is
    # on it, and on a user's token (one token for all keys) that would break the
    # openssl-engine cases that happen to run after it.
    items.sort(key=lambda item: item.get_closest_marker("eddsa") is not None)


def _java_version(settings: Settings) -> str:

    try:
        jdk = find_jdk(settings.java_home)
    except HarnessError as exc:
        return f"Java: {exc}"
    return f"Java {jdk.version} ({jdk.home})"


def pytest_report_header(config: pytest.Config) -> list[str]:
    if settings_key not in config.stash:  # not (yet) acting: no probes, nothing to say
        return []
    config.stash[header_key] = True
    return _header_lines(config)


def _header_lines(config: pytest.Config) -> list[str]:
    settings = config.stash[settings_key]
    if settings.named_module is not None:
        module = f"named module {settings.named_module}: a throw-away token of its own"
    elif settings.module is None:
        module = "embedded default: throw-away SoftHSM2 token"
        module += f" ({tool_version(['softhsm2-util', '--version'])})"
    else:
        token = config.stash.get(token_info_key, None) or _describe(settings)
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
    profile = config.stash.get(profile_key, None)
    if profile is not None:
        lines.append(f"p11tls profile: {profile.label} -- an emulation, "
                     "not the device")
    return fit_lines(lines, _width(config, settings))


def _width(config: pytest.Config, settings: Settings) -> int | None:
    """pytest's own width (the terminal's, COLUMNS, 80 in a pipe); None: --p11-wide."""
    return None if settings.wide else config.get_terminal_writer().fullwidth


def _describe(settings: Settings) -> dict[str, Any]:
    """The token's description for the header, read without logging in."""
    assert settings.module is not None
    try:
        return describe_token(settings.module, settings.token_label or "", settings.timeout_s)
    except HarnessError:
        return {}  # the login check before the first test says what is wrong


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "p11tls_case" not in metafunc.fixturenames:
        return
    if not _explicit(metafunc.config) and metafunc.definition.get_closest_marker(MARKER) is None:
        return  # not asked: the test gets no cases (pytest says the fixture is missing)
    try:
        if lab_missing_key in metafunc.config.stash:
            raise LabModuleMissing(metafunc.config.stash[lab_missing_key])
        settings = _activate(metafunc.config)
    except LabModuleMissing as exc:  # P11TLS_LAB alone reaches here first
        metafunc.config.stash[lab_missing_key] = str(exc)
        metafunc.parametrize("p11tls_case", [pytest.param(None, id="lab-module-not-installed",
                                                       marks=pytest.mark.skip(reason=str(exc)))])
        return
    except HarnessError:
        # no cases: pytest_collection_finish (or the xdist controller) stops the
        # run with the one-line error; raising here would print a traceback
        metafunc.config.stash[bad_key] = True
        metafunc.parametrize("p11tls_case", [])
        return
    # Expected failures are not marked here: they hold for the versions they
    # were measured on, which the runner detects; the case xfails itself.
    keys = settings.keys
    if settings.read_only:
        try:
            keys = _existing_keys(metafunc.config, settings)
        except HarnessError:
            metafunc.config.stash[bad_key] = True
            metafunc.parametrize("p11tls_case", [])
            return
    params = [pytest.param(case, id=case.case_id,
                           marks=[getattr(pytest.mark, m) for m in case.markers])
              for case in cases(list(settings.clients), keys, existing=settings.read_only)]
    metafunc.parametrize("p11tls_case", params)


def _existing_keys(config: pytest.Config, settings: Settings) -> tuple[Any, ...]:
    """Read-only mode: the KeySpecs of the keys on the token, read once without a
    login; a failure is kept and raised again where it becomes the one-line error."""
    if existing_key not in config.stash:

        assert settings.module is not None
        try:
            config.stash[existing_key] = existing_specs(
                settings.module, settings.token_label or "", all_pairs=settings.existing,
                uris=settings.key_uris, timeout_s=settings.timeout_s)
        except HarnessError as exc:
            config.stash[existing_key] = (exc,)
    found = config.stash[existing_key]
    if found and isinstance(found[0], HarnessError):
        raise found[0]
    return found


@pytest.fixture(scope="session")
def p11tls_settings(pytestconfig: pytest.Config) -> Settings:
    """The resolved harness settings (module, token, PIN, reports directory)."""
    if not (_explicit(pytestconfig) or pytestconfig.stash.get(asked_key, False)):
        pytest.fail(NOT_ASKED, pytrace=False)
    return _activate(pytestconfig)


@pytest.fixture(scope="session")
def p11tls_runner(p11tls_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
               pytestconfig: pytest.Config) -> Iterator[Any]:
    """The session's MatrixRunner: token (throw-away SoftHSM2 by default), CA, keys.

    Each pytest-xdist worker gets its own. A bad module, token label or PIN
    ends the whole run with one line: the PIN is never tried twice.
    """

    try:
        runner = MatrixRunner(
            p11tls_settings, workdir=tmp_path_factory.mktemp("p11tls"),
            logs_dir=run_dir(p11tls_settings.reports, _run_id(pytestconfig)) / "logs",
            run_lock_held=True, session_id=_run_id(pytestconfig))
    except HarnessError as exc:
        pytest.exit(f"p11tls: {exc}", returncode=3)
    pin_masking.register(runner.pin)  # the throw-away token's PIN is masked too
    pytestconfig.stash[runner_key] = runner
    yield runner
    _close_runner(pytestconfig)
    for recorder in runner.recorders.values():  # what the spy wrote outside any case
        recorder.scrub()


def _close_runner(config: pytest.Config) -> str | None:
    """Clean the token (once); the one-line error when objects were left."""
    runner = config.stash.get(runner_key, None)
    if runner is None:
        return None
    try:
        runner.close()
    except HarnessError as exc:
        return f"p11tls: {exc}"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """The token is cleaned before anything else ends the session (reports,
    fixture teardown): whatever ended the run."""
    error = _close_runner(session.config)
    if error is not None:
        _say(session.config, error)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[session_key] = session


@pytest.fixture
def p11tls_record(request: pytest.FixtureRequest) -> Any:
    """Call with a HandshakeRecord (judged: MatrixRunner.judge) to put it into
    reports/results.json; the reports take pytest's verdict on the test."""

    def record(handshake: HandshakeRecord) -> None:
        request.node.user_properties.append((RECORD_PROPERTY, handshake.to_json()))

    return record


def verdict_word(report: pytest.TestReport) -> str:
    """passed / failed / xfailed / skipped, as pytest's summary counts the report."""
    if hasattr(report, "wasxfail"):
        return "failed" if report.failed else ("xfailed" if report.skipped else "passed")
    return report.outcome


def reconcile(record: HandshakeRecord, report: pytest.TestReport) -> None:
    """Give the record pytest's verdict: a case pytest failed, for whatever
    reason, is failed in every report (with pytest's message as a problem);
    the library's own "failed" is never weakened."""
    word = verdict_word(report)
    if word == "failed":
        if record.verdict != "failed" or not record.problems:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = " ".join(str(getattr(crash, "message", "") or report.longrepr).split())
            record.problems = [*record.problems,
                               f"pytest ({report.when}): {message[:300] or 'failed'}"]
        record.verdict = "failed"
    elif report.when == "call" and record.verdict != "failed":
        record.verdict = word
        if word == "xfailed" and not record.expected and not record.unmeasured:
            record.expected = str(getattr(report, "wasxfail", "")) or "expected to fail"


class RecordCollector:
    """Collects HandshakeRecords in the controller (xdist workers' records too,
    as they travel in report.user_properties), gives each pytest's verdict on
    its test, and writes the reports at the end."""

    def __init__(self, settings: Settings, config: pytest.Config) -> None:
        self.settings = settings
        self.config = config
        self.records: list[HandshakeRecord] = []
        self._by_test: dict[str, HandshakeRecord] = {}
        self.stopped: str | None = None  # a token stopped answering: the one line
        self.slow = SlowCases(lambda line: _say_uncaptured(config, line))  # slow tokens
        self.no_import: str | None = None  # the token cannot import: said once

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        case = matrix_case(nodeid)
        if case is not None:
            self.slow.stop(case)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        case = matrix_case(report.nodeid)
        # from the end of its set-up: the session's (token, CA, builds) is no case's
        if case is not None and report.when == "setup" and report.passed:
            self.slow.start(case)
        record = self._by_test.get(report.nodeid)
        if record is None:
            for name, value in report.user_properties:
                if name == RECORD_PROPERTY and isinstance(value, dict):
                    record = HandshakeRecord(**value)
                    self.records.append(record)
                    self._by_test[report.nodeid] = record
                    break
        if record is not None:
            reconcile(record, report)
            if (self.stopped is None and record.error
                    and record.error.startswith(STOPPED)):
                self.stopped = record.error  # the remaining cases end the run, once
                _say(self.config, f"p11tls: {record.error}")
                session = self.config.stash.get(session_key, None)
                if session is not None:
                    session.shouldstop = STOPPED
            if (self.no_import is None and record.error
                    and record.error.startswith(IMPORT_UNSUPPORTED)):
                self.no_import = record.error
                _say(self.config, f"p11tls: {record.error}: its import cases are skipped "
                     "with that reason (their calls stay in the records)")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """After the token's clean-up (the plugin's tryfirst hook): the run's
        own directory, then the latest-run links and top-level copies."""
        self.slow.close()
        if not self.records:
            return
        reports = self.settings.reports
        directory = run_dir(reports, _run_id(self.config))
        try:
            write_results(self.records, directory / "results.json")
            write_reports(self.records, directory)
            publish(reports, directory)
        except (HarnessError, OSError) as exc:
            _say(self.config, f"p11tls: the reports could not be written: {exc}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.records:
            return
        terminalreporter.section("PKCS#11 TLS client-auth matrix")
        width = _width(self.config, self.settings)
        terminalreporter.write_line(terminal_matrix(self.records, width))
        reports = self.settings.reports
        lines = [prediction_summary(self.records) or "",
                 *(read_only_summary(self.records) if self.settings.read_only else ())]
        for line in fit_lines([line for line in lines if line], width):
            terminalreporter.write_line(line)
        # the directory once and whole, to be copied
        terminalreporter.write_line(f"reports in {reports}: results.json, matrix.html, "
                                    "matrix.md")


def read_only_summary(records: list[HandshakeRecord]) -> list[str]:
    """A read-only run's keys (label, CKA_ID, type) and its proof that it wrote nothing."""

    keys: list[dict[str, Any]] = next((r.module["existing_keys"] for r in records
                                       if r.module.get("existing_keys")), [])
    lines = ["read-only run on the keys already on the token:"]
    lines += [f"  {k['label']!r} CKA_ID {k['id']} {k['type']}, "
              + (f"certificate issued by {k['issuer']}" if k.get("issuer")
                 else "no certificate on the token (one made in memory for file-certificate "
                      "clients)") for k in keys]
    calls = sum(len(r.calls or ()) for r in records)
    writes = sorted({w for r in records for w in writes_in(r.calls)})
    failed = [r.case_id for r in records if any("read-only run, yet" in p for p in r.problems)]
    if writes or failed:
        lines.append(f"the run WROTE to the token: {', '.join(writes) or 'see ' + failed[0]}")
    else:
        lines.append(f"the run wrote nothing: no C_CreateObject, C_GenerateKeyPair, "
                     f"C_DestroyObject or C_SetAttributeValue among {calls} recorded client "
                     "calls, nor among the harness's own")
    return lines
