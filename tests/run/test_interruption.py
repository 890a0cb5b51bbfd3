"""A run can never harm a token: whatever ends it, the harness's objects go,
unrelated objects stay byte-identical, no child process survives.

Real parts: a throw-away SoftHSM2 store seeded with unrelated objects by
pkcs11-tool stands in for the user's card (SoftHSM keeps one file per object,
so the unrelated objects are fingerprinted by their files' bytes); each run is
a child pytest interrupted by real signals. Emulation profiles (tmp files)
stand in for a slow, hung or fixed-slot card.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "tests" / "test_matrix.py"
PIN = "4711"
LABEL = "user card"
# ~26 cases with a 150 ms signature: a run long enough to be interrupted mid-way
CLIENTS = "openssl-engine,gnutls"
SLOW = 'name = "slowish"\n[faults]\nlatency_ms = { C_Sign = 150 }\n'

pytestmark = pytest.mark.skipif(shutil.which("pkcs11-tool") is None,
                                reason="needs pkcs11-tool (package opensc)")


class Card:
    """A SoftHSM2 token with an unrelated key pair, certificate and data object."""

    def __init__(self, base: Path) -> None:
        from harness.token.softhsm import TemporarySoftHSM

        self.store = TemporarySoftHSM(base / "card")
        self.store.init_token(LABEL, PIN)
        self.module = self.store.module
        self.env = {**os.environ, **self.store.env, "P11TLS_STATE_DIR": str(base / "state")}
        self.state = base / "state"
        tool = ["pkcs11-tool", "--module", str(self.module), "--token-label", LABEL,
                "--login", "--pin", PIN]
        run = [tool + ["--keypairgen", "--key-type", "EC:prime256v1", "--id", "a1b2c3d4e5f6",
                       "--label", "unrelated-key"]]
        data = base / "data.bin"
        data.write_bytes(os.urandom(200))
        run.append(tool + ["--write-object", str(data), "--type", "data",
                           "--label", "unrelated-data", "--private"])
        cert = base / "cert.der"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(base / "k.pem"),
                        "-subj", "/CN=unrelated", "-outform", "DER", "-out", str(cert)],
                       check=True, capture_output=True)
        (base / "k.pem").unlink()
        run.append(tool + ["--write-object", str(cert), "--type", "cert", "--id", "a1b2c3d4e5f6",
                           "--label", "unrelated-cert"])
        for argv in run:
            subprocess.run(argv, check=True, capture_output=True, env=self.env)
        self.seeded = self.fingerprint()
        assert len(self.seeded) == 4  # private key, public key, certificate, data

    def fingerprint(self) -> dict[str, str]:
        """sha256 of every object file of the token (SoftHSM: one file per object)."""
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in self.store.tokendir.rglob("*.object") if p.name != "token.object"}

    def harness_objects(self) -> list[str]:
        """Object files that are not the seeded ones (the harness's leftovers)."""
        return sorted(set(self.fingerprint()) - set(self.seeded))

    def assert_untouched(self) -> None:
        now = self.fingerprint()
        assert {k: now.get(k) for k in self.seeded} == self.seeded  # byte-identical
        assert self.harness_objects() == []
        journals = list((self.state / "journal").rglob("*.jsonl"))
        assert journals == [], journals

    def args(self, *extra: str) -> list[str]:
        return ["--p11-module", str(self.module), "--p11-token-label", LABEL,
                "--p11-pin", PIN, *extra]


@pytest.fixture
def card(tmp_path: Path) -> Card:
    return Card(tmp_path)


def child(card: Card, tmp: Path, name: str, *args: str,
          slow: bool = True) -> tuple[subprocess.Popen[str], Path]:
    """A child pytest running the matrix on the card; its basetemp names the run."""
    base = tmp / name
    base.mkdir()
    profile = []
    if slow:
        (base / "slow.toml").write_text(SLOW)
        profile = ["--p11-profile", str(base / "slow.toml")]
    argv = [sys.executable, "-m", "pytest", str(MATRIX), "-p", "no:cacheprovider", "-q",
            f"--basetemp={base / 'bt'}", f"--p11-reports={base / 'reports'}",
            f"--p11-clients={CLIENTS}", *profile, *card.args(), *args]
    proc = subprocess.Popen(argv, cwd=ROOT, env=card.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, base


def wait_for_keys(card: Card, count: int, proc: subprocess.Popen[str], limit: float = 60) -> None:
    """Until the run's journal names `count` keys (objects are being made)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        for journal in (card.state / "journal").rglob("*.jsonl"):
            lines = journal.read_text().splitlines()
            if sum('"label"' in line for line in lines) >= count:
                return
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    raise AssertionError("the run made no keys in time")


def processes_naming(path: Path) -> list[str]:
    """Processes (no psutil: /proc) whose command line or environment names path."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in text:
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:120]!r}")
    return found


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def no_children_left(base: Path) -> None:
    deadline = time.monotonic() + 5  # a process group being reaped
    while processes_naming(base) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_naming(base) == []


# -- normal run and its negative control ---------------------------------------------------


def test_normal_run_leaves_only_the_unrelated_objects(card, tmp_path):
    proc, base = child(card, tmp_path, "normal", "-k", "p256", slow=False)
    out = finish(proc)
    assert proc.returncode == 0, out
    card.assert_untouched()
    no_children_left(base)
    # negative control: the fingerprint sees an object that is not the seed's
    subprocess.run(["pkcs11-tool", "--module", str(card.module), "--token-label", LABEL,
                    "--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:prime256v1",
                    "--label", "p11tls-ffffff-extra"], check=True, capture_output=True,
                   env=card.env)
    assert len(card.harness_objects()) == 2


# -- signals -------------------------------------------------------------------------------


@pytest.mark.parametrize("signals", [
    (signal.SIGINT,), (signal.SIGINT, signal.SIGINT), (signal.SIGTERM,), (signal.SIGHUP,),
], ids=["sigint", "two-sigint", "sigterm", "sighup"])
def test_a_signal_mid_run_cleans_the_token_first(card, tmp_path, signals):
    proc, base = child(card, tmp_path, "signal")
    wait_for_keys(card, 2, proc)
    assert card.harness_objects()  # control: mid-run, the harness's objects are there
    for i, signum in enumerate(signals):
        if i:
            time.sleep(0.3)
        proc.send_signal(signum)
    out = finish(proc)
    assert proc.returncode != 0
    assert "Traceback" not in out
    card.assert_untouched()
    no_children_left(base)


def test_sigterm_with_two_xdist_workers(card, tmp_path):
    pytest.importorskip("xdist")
    proc, base = child(card, tmp_path, "xdist", "-n", "2")
    wait_for_keys(card, 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # as `timeout` or a CI runner does: the group
    out = finish(proc)
    assert proc.returncode != 0, out
    card.assert_untouched()
    no_children_left(base)


def test_sigterm_to_the_xdist_controller_alone(card, tmp_path):
    pytest.importorskip("xdist")
    proc, base = child(card, tmp_path, "xdist1", "-n", "2")
    wait_for_keys(card, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, timeout=120)
    assert proc.returncode != 0, out
    card.assert_untouched()
    no_children_left(base)


def test_a_killed_client_fails_its_case_and_the_run_goes_on(card, tmp_path):
    hung = tmp_path / "hung.toml"
    hung.write_text('name = "hung"\n[faults]\nlatency_ms = { C_Sign = 60000 }\n')
    proc, base = child(card, tmp_path, "killed", "--p11-profile", str(hung),
                       "-k", "gnutls-p256-generate-tls12 or gnutls-p256-import-tls12",
                       slow=False)
    end = time.monotonic() + 60
    killed = 0
    while proc.poll() is None and time.monotonic() < end:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmd = (entry / "cmdline").read_bytes()
                    env = (entry / "environ").read_bytes()
                except OSError:
                    continue
                if cmd.split(b"\0")[0].endswith(b"gnutls-cli") and str(base).encode() in env:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
        time.sleep(0.1)
    out = finish(proc)
    assert killed >= 1 and "2 failed" in out, out
    card.assert_untouched()
    no_children_left(base)


# -- a run that could not clean up: journal, one line, p11tls cleanup ----------------------


def test_leftovers_of_a_killed_run_are_found_and_removed_only_with_yes(card, tmp_path):
    proc, base = child(card, tmp_path, "sigkill")
    wait_for_keys(card, 3, proc)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)  # nothing can clean up after this
    finish(proc)
    left = card.harness_objects()
    assert left  # the control: a SIGKILL leaves objects
    journals = list((card.state / "journal").rglob("*.jsonl"))
    assert len(journals) == 1 and journals[0].stat().st_mode & 0o777 == 0o600
    assert PIN not in journals[0].read_text()
    cli = [sys.executable, "-m", "harness.cli", "cleanup", "--p11-module", str(card.module),
           "--p11-token-label", LABEL]
    listing = subprocess.run(cli + ["--p11-pin", PIN], capture_output=True, text=True,
                             env=card.env, cwd=ROOT)
    assert listing.returncode == 0, listing.stderr
    assert "p11tls-" in listing.stdout and "CKO_PRIVATE_KEY" in listing.stdout
    assert "unrelated" not in listing.stdout
    assert card.harness_objects() == left  # listed, not deleted
    # the next run says so in one line (and cleans only its own objects)
    proc, _ = child(card, tmp_path, "next", "-k", "gnutls-p256-generate-tls12", slow=False)
    out = finish(proc)
    lines = [line for line in out.splitlines() if "left by earlier runs" in line]
    assert len(lines) == 1 and "p11tls cleanup" in lines[0], out
    assert card.harness_objects() == left
    deleted = subprocess.run(cli + ["--p11-pin", PIN, "--yes"], capture_output=True, text=True,
                             env=card.env, cwd=ROOT)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout, deleted.stderr
    card.assert_untouched()


# -- one token, one run at a time; one directory per run ----------------------------------


def test_two_runs_on_one_token_both_complete_and_keep_both_results(card, tmp_path):
    shared = tmp_path / "shared-reports"
    procs = []
    for name in ("first", "second"):
        proc, base = child(card, tmp_path, name, "-k", "p256", f"--p11-reports={shared}",
                           slow=False)
        procs.append((proc, base))
    outs = [finish(p) for p, _ in procs]
    for (proc, _), out in zip(procs, outs):
        assert proc.returncode == 0, out
        assert "passed" in out
    assert sum("in use by another harness run" in out for out in outs) == 1, outs
    runs = sorted((shared / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert len(json.loads((run / "results.json").read_text())["cases"]) == 8
    assert (shared / "latest").resolve() in [r.resolve() for r in runs]
    assert json.loads((shared / "results.json").read_text())["cases"]  # the top level as before
    card.assert_untouched()


# -- a hung token --------------------------------------------------------------------------


def test_a_hung_token_stops_the_run_after_three_timeouts(card, tmp_path):
    hung = tmp_path / "hung.toml"
    hung.write_text('name = "hung"\n[faults]\nlatency_ms = { C_Sign = 60000 }\n')
    timeout = 3
    start = time.monotonic()
    proc, base = child(card, tmp_path, "hang", "--p11-profile", str(hung),
                       f"--p11-timeout={timeout}", slow=False)
    out = finish(proc, timeout=120)
    took = time.monotonic() - start
    assert proc.returncode != 0
    assert "token stopped answering" in out
    assert took < 3 * timeout + 15, (took, out)  # set-up: pytest, module, keys
    card.assert_untouched()
    no_children_left(base)


def test_a_hung_harness_call_is_abandoned_and_named(card, tmp_path):
    """The harness's own C_GenerateKeyPair hangs: bounded by the timeout."""
    hung = tmp_path / "hung-gen.toml"
    hung.write_text('name = "hung-gen"\n[faults]\nlatency_ms = { C_GenerateKeyPair = 60000 }\n')
    start = time.monotonic()
    proc, base = child(card, tmp_path, "hanggen", "--p11-profile", str(hung),
                       "--p11-timeout=2", "-k", "generate", slow=False)
    out = finish(proc, timeout=120)
    assert time.monotonic() - start < 40, out
    assert "did not answer C_GenerateKeyPair within 2 s" in out
    assert "token stopped answering" in out
    now = card.fingerprint()
    assert {k: now.get(k) for k in card.seeded} == card.seeded
    no_children_left(base)


# -- fixed-slot cards ----------------------------------------------------------------------


@pytest.mark.parametrize("model, manufacturer", [
    ("PIV_II", "piv_II"), ("OpenPGP card", "OpenPGP project"), ("YubiKey YK5", "Yubico"),
])
def test_a_fixed_slot_card_is_refused_before_any_key(card, tmp_path, model, manufacturer):
    profile = tmp_path / "card.toml"
    profile.write_text(f'name = "fixed"\n[token]\nmodel = "{model}"\n'
                       f'manufacturer = "{manufacturer}"\n')
    proc, _ = child(card, tmp_path, "fixed", "--p11-profile", str(profile), "-k", "p256",
                    slow=False)
    out = finish(proc)
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if "fixed slots" in line]
    assert len(errors) == 1 and "--p11-allow-slot-overwrite" in errors[0], out
    assert "Traceback" not in out
    card.assert_untouched()
    assert not list((card.state / "journal").rglob("*.jsonl"))
    # negative control: the user accepts it for a disposable card
    proc, _ = child(card, tmp_path, "fixed-ok", "--p11-profile", str(profile),
                    "--p11-allow-slot-overwrite", "-k", "gnutls-p256", slow=False)
    out = finish(proc)
    assert proc.returncode == 0, out
    card.assert_untouched()


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "report", "diff", "merge"])
@pytest.mark.parametrize("content", ["deep", "huge"])
def test_bad_results_files_give_one_line(tmp_path, command, content):
    bad = tmp_path / "bad.json"
    if content == "deep":
        bad.write_text("[" * 100_000 + "]" * 100_000)
    else:
        with open(bad, "wb") as f:
            f.truncate(600 * 1024 * 1024)  # sparse: no disk used
    args = {"show": [str(bad)], "report": [str(bad), "-o", str(tmp_path / "out")],
            "diff": [str(bad), str(bad)], "merge": [str(bad), "-o", str(tmp_path / "m.json")]}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", command, *args[command]],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "not a results file" in proc.stderr


def test_bad_input_leaves_the_card_untouched(card, tmp_path):
    proc, _ = child(card, tmp_path, "bad", "--p11-timeout=-1", slow=False)
    out = finish(proc)
    assert proc.returncode != 0 and "--p11-timeout" in out
    card.assert_untouched()
