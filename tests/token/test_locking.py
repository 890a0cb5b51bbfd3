"""Locks and journals are keyed by the token, kept where every user sees them."""

from __future__ import annotations

import os
import time

import pytest

from harness.token import locking
from harness.token.journal import HEARTBEAT_S, Journal, scan_journals
from harness.token.locking import TokenLock, state_dir, token_key

CARD = {"manufacturer": "ACME", "model": "Card 9", "serial": "0042", "token_label": "mine"}


def test_the_key_is_the_tokens_identity_not_its_module():
    via_proxy = {**CARD, "path": "/usr/lib/p11-kit-proxy.so"}
    direct = {**CARD, "path": "/usr/lib/softhsm/libsofthsm2.so"}
    assert token_key(via_proxy) == token_key(direct)
    # negative controls: each field of the identity tells two tokens apart
    for field in ("manufacturer", "model", "serial", "token_label"):
        assert token_key({**CARD, field: "other"}) != token_key(CARD), field


def test_the_system_state_directory_is_shared_and_sticky(tmp_path, monkeypatch):
    monkeypatch.delenv("P11TLS_STATE_DIR")
    monkeypatch.setattr(locking, "SYSTEM_STATE_DIR", tmp_path / "p11tls")
    assert state_dir() == tmp_path / "p11tls"
    assert (tmp_path / "p11tls").stat().st_mode & 0o7777 == 0o1777
    lock = TokenLock(token_key(CARD), "token 'mine'")
    assert lock.path.parent.stat().st_mode & 0o7777 == 0o1777
    assert lock.acquire(wait=False)
    assert lock.path.stat().st_mode & 0o777 == 0o644  # others can take it in turn
    lock.release()


def test_an_unusable_system_directory_falls_back_with_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("P11TLS_STATE_DIR")
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(locking, "SYSTEM_STATE_DIR", tmp_path / "file" / "p11tls")
    monkeypatch.setattr(locking, "_warned", [])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert state_dir() == tmp_path / "cache" / "p11tls"
    assert "warning" in capsys.readouterr().err
    state_dir()
    assert capsys.readouterr().err == ""  # said once


def test_the_override_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("P11TLS_STATE_DIR", str(tmp_path / "mine"))
    assert state_dir() == tmp_path / "mine"


def test_a_held_lock_is_refused_without_waiting(tmp_path):
    first = TokenLock("k", "token 'x'", directory=tmp_path)
    second = TokenLock("k", "token 'x'", directory=tmp_path)
    assert first.acquire(wait=False)
    assert not second.acquire(wait=False)
    assert f"pid {os.getpid()}" in second.holder()
    first.release()
    assert second.acquire(wait=False)  # control: free again
    second.release()


def test_a_bounded_wait_gives_up_after_its_time(tmp_path):
    first = TokenLock("k", "token 'x'", directory=tmp_path)
    second = TokenLock("k", "token 'x'", directory=tmp_path)
    assert first.acquire(wait=False)
    started = time.monotonic()
    assert not second.acquire(poll_s=0.05, within_s=0.3)
    assert 0.3 <= time.monotonic() - started < 5 and not second.held
    first.release()
    assert second.acquire(poll_s=0.05, within_s=0.3)  # control: free, taken at once
    second.release()


def test_another_hosts_journal_is_live_while_it_beats(tmp_path):
    import json
    import time

    remote = tmp_path / "abc123.jsonl"
    remote.write_text(json.dumps({"run": "abc123", "host": "lab-host-2"}) + "\n")
    _, live = scan_journals(tmp_path)
    assert live == {"abc123"}  # touched just now: its run is alive over there
    old = time.time() - 10 * HEARTBEAT_S
    os.utime(remote, (old, old))
    ended, live = scan_journals(tmp_path)
    assert live == set() and [r.tag for r in ended] == ["abc123"]


def test_a_journal_of_this_host_is_live_while_held(tmp_path):
    journal = Journal(tmp_path, "def456", {})
    _, live = scan_journals(tmp_path)
    assert live == {"def456"}
    journal.close(clean=False)
    ended, live = scan_journals(tmp_path)
    assert live == set() and [r.tag for r in ended] == ["def456"]


@pytest.mark.parametrize("clean", [True, False])
def test_an_abandoned_call_is_written_down(tmp_path, clean):
    journal = Journal(tmp_path, "aaa111", {})
    journal.intend("p11tls-aaa111-p256-generate", "01")
    if not clean:
        journal.abandoned("C_GenerateKeyPair")
    journal.close(clean=False)
    assert ('"abandoned": "C_GenerateKeyPair"' in (tmp_path / "aaa111.jsonl").read_text()) \
        is not clean
