"""Progress of slow cases: on a slow token (a real card, a remote HSM) a case
can take many seconds; the run then says which case is running and for how
long, instead of sitting silent after its last dot. A fast case says nothing.
The time counts from the end of the case's set-up: the session's (the token,
the CA, the interposer build) belongs to no case.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["SLOW_AFTER_S", "SlowCases", "matrix_case"]

SLOW_AFTER_S = 5.0  # the first line after this long: more than any case on SoftHSM2
REPEAT_S = 15.0  # then one line per this long, while the case runs
MATRIX_TEST = "::test_handshake["  # harness/matrix_test.py's test, by any path


def matrix_case(nodeid: str) -> str | None:
    """`tests/test_matrix.py::test_handshake[java-p256-generate-tls12]` -> the case id."""
    if MATRIX_TEST not in nodeid:
        return None
    return nodeid.split(MATRIX_TEST, 1)[1].removesuffix("]")


class SlowCases:
    """Lines for the cases that run longer than `after` seconds: `p11tls:
    CASE running for 5 s`, again every `every` seconds, and `CASE took 23.4 s`
    when it ends. Timers run in daemon threads; `stop` and `close` cancel them."""

    def __init__(self, say: Callable[[str], None], *, after: float = SLOW_AFTER_S,
                 every: float = REPEAT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._say, self._after, self._every, self._clock = say, after, every, clock
        self._lock = threading.Lock()
        self._running: dict[str, tuple[float, threading.Timer]] = {}
        self._told: set[str] = set()

    def start(self, case: str) -> None:
        with self._lock:
            self._arm(case, self._clock(), self._after)

    def _arm(self, case: str, started: float, delay: float) -> None:
        timer = threading.Timer(delay, self._tick, (case,))
        timer.daemon = True
        self._running[case] = (started, timer)
        timer.start()

    def _tick(self, case: str) -> None:
        with self._lock:
            if case not in self._running:  # stopped meanwhile
                return
            started, _ = self._running[case]
            self._told.add(case)
            self._say(f"p11tls: {case} running for {self._clock() - started:.0f} s")
            self._arm(case, started, self._every)

    def stop(self, case: str) -> None:
        with self._lock:
            started, timer = self._running.pop(case, (None, None))
            if timer is not None:
                timer.cancel()
            if case in self._told and started is not None:
                self._told.discard(case)
                self._say(f"p11tls: {case} took {self._clock() - started:.1f} s")

    def close(self) -> None:
        with self._lock:
            for _, timer in self._running.values():
                timer.cancel()
            self._running.clear()
