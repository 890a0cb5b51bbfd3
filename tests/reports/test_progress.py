"""Slow cases say what is running and for how long; fast runs say nothing."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from harness.reports.progress import SLOW_AFTER_S, SlowCases, matrix_case

MATRIX_TEST = (Path(__file__).parents[1] / "test_matrix.py").read_text()
# the shipped slow-card profile, slower: one signature longer than SLOW_AFTER_S
SLOWER = (Path(__file__).parents[2] / "harness" / "profiles" / "slow-card.toml").read_text() \
    .replace('name = "slow-card"', 'name = "slower-card"') \
    .replace("C_Sign = 150, C_SignFinal = 150", "C_Sign = 6500, C_SignFinal = 6500")


def test_the_case_id_of_a_matrix_test():
    assert matrix_case("tests/test_matrix.py::test_handshake[java-p256-generate-tls12]") \
        == "java-p256-generate-tls12"
    assert matrix_case("tests/test_plugin.py::test_handshake_like") is None


def test_a_slow_case_is_named_with_its_time_and_a_fast_one_is_not():
    lines: list[str] = []
    seen = threading.Event()

    def say(line: str) -> None:
        lines.append(line)
        if len(lines) == 2:
            seen.set()

    slow = SlowCases(say, after=0.05, every=0.05)
    slow.start("fast-case")
    slow.stop("fast-case")  # control: ended before `after`, no line
    slow.start("slow-case")
    assert seen.wait(5)
    slow.stop("slow-case")
    assert [re.sub(r"[\d.]+ s", "N s", line) for line in lines[:2]] == [
        "p11tls: slow-case running for N s"] * 2
    assert re.fullmatch(r"p11tls: slow-case took \d+\.\d s", lines[-1])
    count = len(lines)
    threading.Event().wait(0.2)
    assert len(lines) == count  # stopped: no more lines
    slow.close()


@pytest.mark.parametrize("slow", [True, False], ids=["slow-card", "fast"])
def test_a_run_on_a_slow_token_says_what_it_does(pytester, slow):
    pytester.makepyfile(test_matrix=MATRIX_TEST)
    profile = []
    if slow:
        (pytester.path / "slower.toml").write_text(SLOWER)
        profile = ["--p11-profile", str(pytester.path / "slower.toml")]
    # two cases: the first may do what a session does once (a build of the
    # interposer in a new cache), the second is a case alone
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--p11-clients", "gnutls", "--p11-keys", "p256",
        "-k", "generate", *profile, timeout=120)
    out = result.stdout.str()
    assert result.ret == 0, out[-3000:]
    running = re.findall(r"p11tls: gnutls-p256-generate-tls13 running for (\d+) s", out)
    took = re.findall(r"p11tls: gnutls-p256-generate-tls13 took ([\d.]+) s", out)
    if slow:
        assert running and int(running[0]) >= SLOW_AFTER_S - 1, out[-3000:]
        assert len(took) == 1 and float(took[0]) > SLOW_AFTER_S
    else:  # negative control: a fast case has no progress lines
        assert not running and not took, out[-3000:]
