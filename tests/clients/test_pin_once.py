"""The PIN FIFO for NSS: the PIN to the first reader only, and a serving
thread that ends with its context whatever happens (issue 23 row 12: Ctrl-C
under -n 2 left a FileNotFoundError traceback and a thread blocked forever)."""

from __future__ import annotations

import threading
import time

import pytest

from harness.clients.pin_once import pin_once


def _servers() -> int:
    return sum(1 for t in threading.enumerate() if t.daemon and t.name.startswith("Thread"))


def test_the_first_reader_gets_the_pin_and_later_ones_nothing():
    with pin_once("4711") as path:
        assert path.read_text() == "4711\n"
        assert path.read_text() == ""  # the control: a second try gets no PIN
        assert path.read_text() == ""


@pytest.mark.parametrize("readers", [0, 1])
def test_the_thread_ends_with_the_context_even_when_interrupted(readers):
    before = _servers()
    with pytest.raises(KeyboardInterrupt):
        with pin_once("4711") as path:
            for _ in range(readers):
                path.read_text()
            raise KeyboardInterrupt  # Ctrl-C while the client runs
    deadline = time.monotonic() + 2
    while _servers() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _servers() == before
    assert not path.exists()
