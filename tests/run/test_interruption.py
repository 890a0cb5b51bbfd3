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
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "tests" / "test_matrix.py"
PIN = "user-" + secrets.token_hex(4)  # no hex dump or run ID can hold it by chance
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
    # 0644: every user's run can tell it is alive; it holds no secret
    assert len(journals) == 1 and journals[0].stat().st_mode & 0o777 == 0o644
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


def test_the_same_token_through_another_module_path_is_one_token(card, tmp_path):
    """Issue 23 row 1: lock and journal follow the token, not the module path:
    `cleanup --yes` through a copy of the module refuses while a run is live,
    and a second run through the copy waits for the first."""
    alias = tmp_path / "alias" / "libother-name.so"
    alias.parent.mkdir()
    shutil.copy(card.module, alias)
    proc, base = child(card, tmp_path, "live")
    wait_for_keys(card, 2, proc)
    made = card.harness_objects()
    cli = [sys.executable, "-m", "harness.cli", "cleanup", "--p11-module", str(alias),
           "--p11-token-label", LABEL, "--p11-pin", PIN, "--yes"]
    refused = subprocess.run(cli, capture_output=True, text=True, env=card.env, cwd=ROOT)
    assert refused.returncode == 2, refused.stdout
    assert refused.stderr.count("\n") == 1 and "in use by a live harness run" in refused.stderr
    assert set(made) <= set(card.harness_objects())  # nothing of the live run deleted
    second, _ = child(card, tmp_path, "second", "-k", "gnutls-p256-generate-tls12",
                      slow=False)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out = finish(proc)
    assert "Traceback" not in out
    out2 = finish(second)
    assert second.returncode == 0, out2
    assert "in use by another harness run" in out2  # it waited: one token
    card.assert_untouched()
    # negative control: with no run live, the same command runs (nothing to delete)
    done = subprocess.run(cli, capture_output=True, text=True, env=card.env, cwd=ROOT)
    assert done.returncode == 0 and "deleted 0 objects" in done.stdout, done.stderr
    no_children_left(base)



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


# -- never exit with a token call in flight (issue 23 row 2, issue 20 item 4) ---------------

CARD_KEYGEN = 'name = "card-keygen"\n[faults]\nlatency_ms = { C_GenerateKeyPair = 3000 }\n'


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_during_the_harness_keygen_waits_for_it_then_cleans(card, tmp_path, signum):
    """A card-like 3 s C_GenerateKeyPair (the time a smart card takes for RSA):
    the signal lands while the harness's own call is inside the module. The
    harness waits for it (within --p11-timeout), then removes the pair: no
    SIGSEGV, no key pair or journal left, no traceback."""
    profile = tmp_path / "keygen.toml"
    profile.write_text(CARD_KEYGEN)
    proc, base = child(card, tmp_path, "keygen", "--p11-profile", str(profile),
                       "-k", "generate", slow=False)
    wait_for_keys(card, 1, proc)  # written down just before the call is sent
    time.sleep(0.5)  # inside the 3 s call
    proc.send_signal(signum)
    out = finish(proc)
    assert proc.returncode not in (0, -signal.SIGSEGV, -signal.SIGABRT), out
    assert "Traceback" not in out and "still busy" not in out, out
    card.assert_untouched()
    no_children_left(base)


def test_token_sweep_on_a_card_that_hangs_leaves_a_journal_saying_so(card, tmp_path):
    """The harness's own C_Sign never returns: token-sweep prints what it
    measured, exits 1 without C_Finalize (no hang at exit), and its journal
    says which call was abandoned; `p11tls cleanup --yes` then removes the key."""
    profile = tmp_path / "hang.toml"
    profile.write_text('name = "hang-card"\n[faults]\n'
                       'hang_after = { function = "C_Sign", calls = 4 }\n')
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "token-sweep", "--p11-profile", str(profile),
         "--mechanisms", "CKM_SHA256_RSA_PKCS", "--max-bytes", "4096", "--p11-timeout=3",
         f"--p11-reports={tmp_path / 'r'}", *card.args()],
        capture_output=True, text=True, env=card.env, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - start < 9 + 10, "3 x the timeout, plus python and RSA keygen"
    assert "largest accepted 8 B so far" in proc.stdout and "Traceback" not in proc.stderr
    journals = list((card.state / "journal").rglob("*.jsonl"))
    assert len(journals) == 1 and '"abandoned": "C_Sign"' in journals[0].read_text()
    assert card.harness_objects()  # the key pair the call was made with
    cli = [sys.executable, "-m", "harness.cli", "cleanup", "--p11-module", str(card.module),
           "--p11-token-label", LABEL, "--p11-pin", PIN, "--yes"]
    done = subprocess.run(cli, capture_output=True, text=True, env=card.env, cwd=ROOT)
    assert done.returncode == 0 and "deleted 3 objects" in done.stdout, done  # pair + cert
    card.assert_untouched()
    no_children_left(tmp_path)


def test_an_unreadable_object_is_one_line_and_never_stops_cleanup(card, tmp_path):
    """An 8-byte SoftHSM object file (what a kill mid-C_CreateObject left):
    `p11tls cleanup` names it in one line and still lists and deletes the
    leftovers beside it; a run on the token works."""
    subprocess.run(["pkcs11-tool", "--module", str(card.module), "--token-label", LABEL,
                    "--login", "--pin", PIN, "--keypairgen", "--key-type", "EC:prime256v1",
                    "--label", "p11tls-abcdef-p256-generate"], check=True, capture_output=True,
                   env=card.env)
    tokendir = next(p for p in card.store.tokendir.iterdir() if p.is_dir())
    corrupt = tokendir / "0badbad0-0000-4000-8000-000000000000.object"
    corrupt.write_bytes(b"\0" * 8)
    cli = [sys.executable, "-m", "harness.cli", "cleanup", "--p11-module", str(card.module),
           "--p11-token-label", LABEL, "--p11-pin", PIN]
    listed = subprocess.run(cli, capture_output=True, text=True, env=card.env, cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr and "AttributeValueInvalid" not in listed.stderr
    unreadable = [line for line in listed.stderr.splitlines() if "cannot be read" in line]
    assert len(unreadable) == 1 and "CKR_" in unreadable[0], listed.stderr
    assert "2 objects left by earlier runs" in listed.stdout
    deleted = subprocess.run(cli + ["--yes"], capture_output=True, text=True, env=card.env,
                             cwd=ROOT)
    assert deleted.returncode == 0 and "deleted 2 objects" in deleted.stdout, deleted.stderr
    proc, _ = child(card, tmp_path, "after", "-k", "gnutls-p256-generate-tls12", slow=False)
    out = finish(proc)
    assert proc.returncode == 0, out
    corrupt.unlink()  # the control: without it the card is as seeded
    card.assert_untouched()


# -- every token command ends on a signal like the matrix (issue 23 row 3) ------------------

SLOW_SIGN = 'name = "slow-sign"\n[faults]\nlatency_ms = { C_Sign = 300 }\n'


def _command(card: Card, tmp: Path, command: str) -> list[str]:
    profile = tmp / "slow-sign.toml"
    profile.write_text(SLOW_SIGN)
    common = ["--p11-profile", str(profile), f"--p11-reports={tmp / 'r'}", *card.args()]
    if command == "token-sweep":
        return ["token-sweep", "--mechanisms", "CKM_SHA256_RSA_PKCS", "--max-bytes", "65536",
                *common]
    return ["sweep", "--clients", "openssl-engine", "--keys", "p256", "--steps", "0,1,2,4,8",
            *common]


@pytest.mark.parametrize("command, signum", [
    ("token-sweep", signal.SIGINT), ("token-sweep", signal.SIGTERM),
    ("token-sweep", signal.SIGHUP), ("sweep", signal.SIGTERM), ("sweep", signal.SIGHUP),
], ids=["token-sweep-int", "token-sweep-term", "token-sweep-hup", "sweep-term", "sweep-hup"])
def test_a_signal_ends_a_token_command_with_the_token_clean(card, tmp_path, command, signum):
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *_command(card, tmp_path,
                                                                            command)],
                            env=card.env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_keys(card, 1, proc)
    time.sleep(1.5)  # signing (300 ms each) or handshaking
    assert card.harness_objects()  # control: mid-run, its objects are there
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert f"stopped by signal {signal.Signals(signum).name}" in err
    assert "Traceback" not in err and err.count("\n") == 1, err
    card.assert_untouched()
    no_children_left(tmp_path)


@pytest.mark.parametrize("command", ["show", "report", "diff", "merge", "explain", "calls",
                                     "profiles"])
def test_a_device_or_fifo_for_a_file_is_one_line(tmp_path, command):
    """Issue 23 row 5: /dev/zero was read until memory ran out (the size check
    read st_size, 0 for a device); a FIFO nobody writes blocked forever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for bad in ("/dev/zero", str(fifo)):
        args = {"report": [bad, "-o", str(tmp_path / "out")], "diff": [bad, bad],
                "merge": [bad, "-o", str(tmp_path / "m.json")]}.get(command, [bad])
        proc = subprocess.run([sys.executable, "-m", "harness.cli", command, *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "not a regular file" in proc.stderr


@pytest.mark.parametrize("command, name, text", [
    ("profiles", "deep.toml", "a = " + "[" * 100_000 + "]" * 100_000 + "\n"),
    ("calls", "deep.jsonl", '{"fn":"C_Sign","seq":1,"rv":"CKR_OK","x":'
     + "[" * 100_000 + "]" * 100_000 + "}\n"),
    ("profiles", "latin1.toml", "name = \"caf\xe9\"\n"),
], ids=["deep-profile", "deep-calls", "not-utf8-profile"])
def test_deep_or_foreign_files_are_one_line(tmp_path, command, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    proc = subprocess.run([sys.executable, "-m", "harness.cli", command, str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and ("nested too deeply" in proc.stderr
                                               or "not UTF-8" in proc.stderr)


def test_the_start_up_check_child_is_bounded_by_the_timeout(card, tmp_path):
    """Issue 23 row 6: a slow token kept the check child waiting 120 s whatever
    --p11-timeout said. With 3 s per call the run ends in one line well
    within the child's bound (3 x 3 s + 5 s), the PIN never answered."""
    slow = tmp_path / "slow-login.toml"
    slow.write_text('name = "slow-login"\n[faults]\nlatency_ms = { C_Login = 60000 }\n')
    start = time.monotonic()
    proc, base = child(card, tmp_path, "slowcheck", "--p11-profile", str(slow),
                       "--p11-timeout=3", "-k", "gnutls-p256-generate-tls12", slow=False)
    out = finish(proc, timeout=120)
    assert proc.returncode != 0
    assert "did not answer C_Login within 3 s" in out, out
    assert "Traceback" not in out and "TimeoutExpired" not in out
    assert time.monotonic() - start < 14 + 10, out  # the bound, plus pytest's start
    card.assert_untouched()
    no_children_left(base)


GOOD_CASE = {"case_id": "gnutls-p256-generate-tls12", "client": "gnutls", "key": "p256",
             "provisioning": "generate", "tls": "1.2", "outcome": "ok", "verdict": "passed"}


@pytest.mark.parametrize("change, raw", [
    ({"duration_s": "fast"}, None), ({"signed_bytes": -5}, None), ({"signed_bytes": True}, None),
    ({"predicted": "ok"}, None), ({"prediction_matched": "yes"}, None),
    (None, '[{"case_id": "a", "client": "gnutls", "key": "p256", "provisioning": "generate",'
           ' "tls": "1.2", "outcome": "ok", "duration_s": Infinity}]'),
], ids=["text-duration", "negative-bytes", "bool-bytes", "text-predicted", "text-matched",
        "infinity"])
def test_wrongly_typed_results_are_refused(tmp_path, change, raw):
    """Issue 23 row 14: such files rendered with exit 0."""
    path = tmp_path / "results.json"
    path.write_text(raw if raw is not None else json.dumps([{**GOOD_CASE, **change}]))
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "show", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "not a results file" in proc.stderr
    path.write_text(json.dumps([GOOD_CASE]))  # control: the same case, well typed
    good = subprocess.run([sys.executable, "-m", "harness.cli", "show", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert good.returncode == 0, good.stderr


def test_ed25519_waits_for_every_other_workers_cases(card, tmp_path):
    """Issue 23 row 4: under -n 2 on one token, one worker's Ed25519 key broke
    the other's libp11 engine cases ("Ed25519 last" held per worker only).
    Now a worker's Ed25519 cases wait until no other worker runs another case."""
    pytest.importorskip("xdist")
    proc, base = child(card, tmp_path, "eddsa", "-n", "2", "--p11-keys=p256,ed25519",
                       "--p11-clients=openssl-engine,gnutls", slow=False)
    out = finish(proc, timeout=300)
    assert proc.returncode == 0, out
    assert re.search(r"\b[1-9]\d* failed", out) is None and "Traceback" not in out, out
    assert re.search(r"\b(1[0-9]|[2-9]\d) passed", out), out  # the cases ran
    card.assert_untouched()
    no_children_left(base)
