"""Child-process driver for tests/interposer/test_fork.py: fork while another thread is
inside a recorded call, holding the interposer's record lock.

    python fork_driver.py MODULE JSON-ARGS     (args: {"record": FIFO path})

The interposer's record file is a FIFO this process reads. A thread calls
C_GetInfo in a loop until the FIFO is full and its write() blocks, inside the
lock that keeps record lines whole. A reader starts draining the FIFO a moment
later, and the main thread forks at once (the reader is a `cat` process: the
forking thread holds Python's GIL while fork() waits for the lock). The child
makes one recorded call and exits; a child that inherited a held lock would
hang in it (the parent kills it after a timeout). The result, one JSON object
on stdout, says how the child ended and which pid/tid its record lines carry.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from interposer_driver import RawModule

CHILD_TIMEOUT_S = 10.0


def main(module: str, args: dict[str, Any]) -> dict[str, Any]:
    # The read end first: the interposer's open() of the FIFO then does not block.
    fifo = os.open(args["record"], os.O_RDONLY | os.O_NONBLOCK)
    raw = RawModule(module)
    assert raw.initialize(os_locking=True) == 0
    info = ctypes.create_string_buffer(256)
    assert raw.C_GetInfo(info) == 0  # the main thread's id is now known to the interposer

    calls, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            raw.C_GetInfo(ctypes.create_string_buffer(256))
            calls[0] += 1

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    # Wait for the FIFO to fill: the spinner stops making progress.
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 0.3:
        if calls[0] != last:
            last, still_since = calls[0], time.monotonic()
        time.sleep(0.01)
    blocked = calls[0] == last

    # The fork starts while the write is still blocked; cat drains 0.3 s later.
    drained = open(args["record"] + ".lines", "wb")  # noqa: SIM115 (closed below)
    os.set_blocking(fifo, True)
    reader = subprocess.Popen(["sh", "-c", "sleep 0.3; exec cat"], stdin=fifo, stdout=drained)
    pid = os.fork()
    if pid == 0:
        rv = raw.C_GetInfo(ctypes.create_string_buffer(256))  # a recorded call of its own
        os._exit(0 if rv == 0 else 3)

    deadline, status = time.monotonic() + CHILD_TIMEOUT_S, "hung"
    while time.monotonic() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = f"exit {os.waitstatus_to_exitcode(code)}"
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    stop.set()
    spinner.join(timeout=5)
    time.sleep(0.2)  # cat has what is in the FIFO
    reader.terminate()
    reader.wait()
    drained.close()
    os.close(fifo)
    with open(args["record"] + ".lines", "rb") as f:
        lines = f.read().decode(errors="replace").splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # the line cut short by the killed child, if any
    child = [{"fn": r["fn"], "pid": r["pid"], "tid": r["tid"]} for r in records
             if r.get("pid") == pid]
    return {"child": status, "child_pid": pid, "parent_pid": os.getpid(),
            "blocked_before_fork": blocked, "parent_lines": len(records) - len(child),
            "child_lines": child}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))))
