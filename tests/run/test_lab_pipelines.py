"""The documented nightly lab pipelines (docs/lab/gitlab-ci.yml,
docs/lab/github-nightly.yml) parse as YAML, have a job per lab entry on a runner
tagged with its token, upload results, and end with merge, report and diff; and
every `p11tls …` and `tox -e …` command they name exists: subcommands and
options parsed by the real CLI parsers, environments listed by the real tox."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import cli
from harness.commands.run import run_parser
from harness.run.lab import load_lab

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "docs" / "lab"
ENTRIES = sorted(load_lab(LAB / "p11tls.toml"))
GITLAB_RESERVED = {"stages", "variables", "default", "include", "workflow", "image",
                   "services", "cache", "before_script", "after_script"}
SHELL_WORDS = {"if", "then", "else", "elif", "fi", "do", "done", "!", "{", "}", "(", ")"}
SEPARATORS = {"&&", "||", ";", "|", "&", ";;", "(", ")"}


def gitlab_commands(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(job, script line with the job's variables put in) for every real job."""
    for name, job in data.items():
        if name in GITLAB_RESERVED or name.startswith(".") or not isinstance(job, dict):
            continue
        merged: dict[str, Any] = {}
        for parent in ([job["extends"]] if isinstance(job.get("extends"), str)
                       else job.get("extends", [])):
            merged.update(data[parent])
        merged.update(job)
        variables = {**data.get("variables", {}), **merged.get("variables", {})}
        for key in ("before_script", "script", "after_script"):
            for line in merged.get(key, []):
                for var, value in variables.items():
                    line = re.sub(rf"\$\{{?{var}\}}?(?![A-Za-z0-9_])", str(value), line)
                yield name, line


def github_commands(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(job, run block) for every step, once per value of the job's matrix."""
    for name, job in data["jobs"].items():
        matrix = job.get("strategy", {}).get("matrix", {})
        combos: list[dict[str, Any]] = [{}]
        for key, values in matrix.items():
            combos = [{**c, key: v} for c in combos for v in values]
        for combo in combos:
            for step in job["steps"]:
                if "run" not in step:
                    continue
                text = step["run"]
                for key, value in combo.items():
                    text = re.sub(rf"\$\{{\{{\s*matrix\.{key}\s*\}}\}}", str(value), text)
                yield name, text


def simple_commands(script: str) -> Iterator[list[str]]:
    """The argv of each simple command in a shell script (no expansion)."""
    for line in script.replace("\\\n", " ").splitlines():  # a newline ends a command
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        command: list[str] = []
        for token in lexer:
            if token in SEPARATORS:
                if command:
                    yield command
                command = []
            elif command or (token not in SHELL_WORDS and not re.match(r"^\w+=", token)):
                command.append(token)
        if command:
            yield command


class Parsed(BaseException):
    """Raised by the real parser once it accepted the arguments."""


def check_p11tls(args: list[str], pytest_options: set[str]) -> str | None:
    """None when the real `p11tls` parsers accept `args`, else why not."""
    if not args:
        return "no subcommand"
    if args[0] == "run":
        known, rest = run_parser().parse_known_args(args[1:])
        unknown = [a.split("=")[0] for a in rest
                   if a.startswith("-") and a.split("=")[0] not in pytest_options]
        return f"p11tls run: unknown options {unknown}" if unknown else None
    real = argparse.ArgumentParser.parse_args

    def parse_only(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
        raise Parsed(real(self, *a, **k))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", parse_only)
        try:
            status = cli.main(args)
        except Parsed:
            return None
        except SystemExit as exc:
            status = exc.code
    return f"p11tls {' '.join(args)}: rejected by its parser (status {status})"


@pytest.fixture(scope="module")
def tox_envs() -> set[str]:
    listed = subprocess.run([sys.executable, "-m", "tox", "list", "-q"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True).stdout
    return {line.split()[0] for line in listed.splitlines()
            if line.strip() and not line.endswith(":") and not line.startswith(" ")}


@pytest.fixture(scope="module")
def pytest_options() -> set[str]:
    """Every option the real pytest (with the p11tls plugin) takes."""
    shown = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120,
                           check=True).stdout
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", shown))


def check_command(argv: list[str], tox_envs: set[str], pytest_options: set[str]) -> str | None:
    """Why a `p11tls …` or `tox …` command would not run; None when it would
    (or when it is neither)."""
    name = Path(argv[0]).name
    if name == "p11tls":
        return check_p11tls(argv[1:], pytest_options)
    if name != "tox":
        return None
    args = argv[1:]
    posargs = args[args.index("--") + 1:] if "--" in args else []
    envs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-e"]
    missing = [e for env in envs for e in env.split(",") if e not in tox_envs]
    if missing or not envs:
        return f"tox: no environment {missing or '(none given)'} in tox.ini"
    if posargs:  # the lab environments hand them to `p11tls run`
        return check_p11tls(["run", *posargs], pytest_options)
    return None


def pipeline_commands(path: Path) -> list[tuple[str, list[str]]]:
    data = yaml.safe_load(path.read_text())
    lines = gitlab_commands(data) if "jobs" not in data else github_commands(data)
    return [(job, argv) for job, text in lines for argv in simple_commands(text)]


@pytest.mark.parametrize("name", ["gitlab-ci.yml", "github-nightly.yml"])
def test_every_p11tls_and_tox_command_of_the_pipeline_exists(name, tox_envs, pytest_options):
    commands = pipeline_commands(LAB / name)
    named = [argv for _, argv in commands if Path(argv[0]).name in ("p11tls", "tox")]
    problems = [why for argv in named if (why := check_command(argv, tox_envs, pytest_options))]
    assert problems == []
    subcommands = {argv[1] for argv in named if Path(argv[0]).name == "p11tls"}
    assert {"merge", "report", "diff"} <= subcommands
    runs = {argv[argv.index("--p11-lab") + 1] for argv in named if "--p11-lab" in argv}
    toxed = {argv[argv.index("-e") + 1] for argv in named if "-e" in argv}
    assert runs | toxed == set(ENTRIES)  # every lab entry runs somewhere


def test_the_checker_refuses_what_does_not_exist(tox_envs, pytest_options):
    """The negative control: the same checks on commands that do not exist."""
    bad = """
p11tls merg a.json -o b.json
p11tls diff only-one.json
p11tls report r.json --bogus
p11tls run --p11-lab x --p11-bogus 1
p11tls run --p11-lab x --no-such-pytest-option
tox -e no-such-env
tox -e softhsm2 -- --p11-labb x
"""
    commands = list(simple_commands(bad))
    assert len(commands) == 7
    assert all(check_command(argv, tox_envs, pytest_options) for argv in commands), [
        argv for argv in commands if not check_command(argv, tox_envs, pytest_options)]
    good = ("p11tls diff a.json b.json && tox -e softhsm2 -- --p11-reports r -m tls12 "
            "|| [ $? -eq 1 ]")
    assert [check_command(argv, tox_envs, pytest_options)
            for argv in simple_commands(good)] == [None, None, None]


def test_gitlab_pipeline_one_job_per_token_tagged_with_it_and_a_final_report():
    data = yaml.safe_load((LAB / "gitlab-ci.yml").read_text())
    jobs = {name: job for name, job in data.items() if name.startswith("matrix:")}
    assert sorted(job["variables"]["LAB"] for job in jobs.values()) == ENTRIES
    for job in jobs.values():
        assert job["tags"] == ["p11tls", job["variables"]["LAB"]]
    module = data[".lab-module"]
    assert module["artifacts"]["when"] == "always"
    assert "reports/$LAB/results.json" in module["artifacts"]["paths"]
    assert "reports/$LAB/runs/" in module["artifacts"]["paths"]  # the per-case logs
    final = data["nightly-report"]
    assert final["stage"] == data["stages"][-1] and "merged/" in final["artifacts"]["paths"]
    assert all(rule["when"] == "always" for rule in final["rules"])
    assert final["script"][-1].count("p11tls diff") == 1  # last: its exit 1 fails the pipeline


def test_github_workflow_one_runner_per_token_uploads_and_diffs_last():
    data = yaml.safe_load((LAB / "github-nightly.yml").read_text())
    assert "schedule" in data[True]  # YAML 1.1 reads the key `on` as true
    matrix = data["jobs"]["matrix"]
    assert sorted(matrix["strategy"]["matrix"]["lab"]) == ENTRIES
    assert matrix["runs-on"] == ["self-hosted", "p11tls", "${{ matrix.lab }}"]
    upload = next(s for s in matrix["steps"] if s.get("uses", "").startswith(
        "actions/upload-artifact"))
    assert upload["if"] == "always()" and "results.json" in upload["with"]["path"]
    report = data["jobs"]["report"]
    assert report["needs"] == "matrix" and report["if"] == "always()"
    assert "p11tls diff" in report["steps"][-1]["run"]
    pins = {e.pin_env for e in load_lab(LAB / "p11tls.toml").values() if e.pin_env}
    assert pins <= set(matrix["env"])  # every PIN variable comes from a secret
    assert all(v.startswith("${{ secrets.") for v in matrix["env"].values())


# -- the GitLab pipeline run for real (gitlab-ci-local, shell executor) --------------

GITLAB_CI_LOCAL = "4.55.0"  # the last 4.x that runs on Node 20 (later ones need Node 22)
TWO_TOKENS = """\
[lab.softhsm2]
module = "softhsm/libsofthsm2.so"
token_label = "pipeline-a"
pin_env = "P11TLS_LAB_SOFTHSM2_PIN"
mode = "provision"
keys = "p256"
clients = "gnutls"

# a second SoftHSM2 token standing in for the TPM host, under another profile
[lab.tpm2-pkcs11]
module = "softhsm/libsofthsm2.so"
token_label = "pipeline-b"
pin_env = "P11TLS_LAB_TPM2_PIN"
mode = "provision"
profile = "combined-pss-only"
keys = "rsa2048,p256"
clients = "gnutls"
"""


def gitlab_ci_local() -> Path:
    """gitlab-ci-local, installed once into the per-user cache with npm."""
    import shutil

    from harness.clients.java.build import default_cache_dir

    missing = [tool for tool in ("npm", "node", "rsync", "git", "softhsm2-util")
               if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Requires {', '.join(missing)}: gitlab-ci-local is an npm package and "
                    "copies the project with rsync (apt-get install npm rsync git softhsm2)")
    prefix = default_cache_dir() / f"gitlab-ci-local-{GITLAB_CI_LOCAL}"
    tool = prefix / "node_modules" / ".bin" / "gitlab-ci-local"
    if not tool.exists():
        proc = subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit",
                               "--no-fund", f"gitlab-ci-local@{GITLAB_CI_LOCAL}"],
                              capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            pytest.skip(f"npm could not install gitlab-ci-local: {proc.stderr[-500:]}")
    return tool


class PreviousNight:
    """The GitLab API's job-artifacts endpoint on loopback: serves the previous
    night's merged results.json, or 404 (the first night)."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.body: bytes | None = None
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if outer.body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.lab_pipeline
def test_gitlab_pipeline_runs_two_hosts_merges_reports_and_diffs(tmp_path):
    """docs/lab/gitlab-ci.yml as a lab copies it, run by gitlab-ci-local with the
    shell executor: two host jobs on two throw-away SoftHSM2 tokens (different
    profiles), their artifacts, the merge, the report, and the diff against the
    previous night: none (first night), the same results (exit 0), and an
    injected regression, which fails the job (the negative control). Only
    variables differ from the example."""
    import json

    tool = gitlab_ci_local()
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, timeout=120)
    store = tmp_path / "softhsm"
    store.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {store}\nobjectstore.backend = file\n")
    pins = {"pipeline-a": "1111", "pipeline-b": "2222"}
    for label, pin in pins.items():
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                        "--pin", pin, "--so-pin", "5678"], check=True, capture_output=True,
                       env={**__import__("os").environ, "SOFTHSM2_CONF": str(conf)})
    lab = tmp_path / "lab.toml"
    lab.write_text(TWO_TOKENS)
    previous = PreviousNight()

    def pipeline(*jobs: str) -> subprocess.CompletedProcess[str]:
        variables = {"CI_PIPELINE_SOURCE": "schedule", "P11TLS_LAB_FILE": str(lab),
                     "SOFTHSM2_CONF": str(conf), "CI_API_V4_URL": previous.url,
                     "P11TLS_LAB_SOFTHSM2_PIN": pins["pipeline-a"],
                     "P11TLS_LAB_TPM2_PIN": pins["pipeline-b"]}
        argv = [str(tool), "--file", "docs/lab/gitlab-ci.yml"]
        for name, value in variables.items():
            argv += ["--variable", f"{name}={value}"]
        return subprocess.run([*argv, *jobs], cwd=repo, capture_output=True, text=True,
                              timeout=900, check=False)

    try:
        first = pipeline("matrix:softhsm2", "matrix:tpm2-pkcs11", "nightly-report")
        out = first.stdout + first.stderr
        assert first.returncode == 0, out[-3000:]
        for job in ("matrix:softhsm2", "matrix:tpm2-pkcs11", "nightly-report"):
            assert re.search(rf"PASS\s+{re.escape(job)}", out), out[-3000:]
        assert "no previous night to compare with" in out
        for lab_name in ("softhsm2", "tpm2-pkcs11"):  # each host's artifacts (":" is "Og")
            artifacts = repo / ".gitlab-ci-local" / "artifacts"
            assert list(artifacts.glob(f"matrix*{lab_name}/reports/{lab_name}/results.json")), \
                sorted(p.name for p in artifacts.iterdir())
        merged = json.loads((repo / "merged" / "results.json").read_text())["cases"]
        assert {r["module"]["token_label"] for r in merged} == set(pins)  # one table each
        assert (repo / "merged" / "matrix.html").stat().st_size > 0
        failing = [r for r in merged if r["outcome"] == "fail"]
        assert failing, "combined-pss-only should fail TLS 1.3 with RSA for gnutls"

        previous.body = (repo / "merged" / "results.json").read_bytes()
        same = pipeline("nightly-report")
        assert same.returncode == 0, (same.stdout + same.stderr)[-3000:]
        assert "0 regression" in same.stdout

        injected = [dict(r) for r in merged]  # a night on which that case still worked
        for record in injected:
            if record["case_id"] == failing[0]["case_id"] and (
                    record["module"]["token_label"] == failing[0]["module"]["token_label"]):
                record.update(outcome="ok", verdict="passed", error=None, expected=None)
        previous.body = json.dumps(injected).encode()
        regressed = pipeline("nightly-report")
        out = regressed.stdout + regressed.stderr
        assert regressed.returncode != 0, out[-3000:]
        assert "REGRESSION" in out and re.search(r"FAIL\s+nightly-report", out), out[-3000:]
    finally:
        previous.close()
