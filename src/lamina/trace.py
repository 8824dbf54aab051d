"""A timeline of one process, for benchmarks: ``LAMINA_TRACE=FILE`` appends one line per event.

    <CLOCK_MONOTONIC seconds> <thread name> <event> [key=value ...]

The clock is the system's monotonic clock, so a parent that notes ``time.monotonic()``
before spawning lamina can put the process start on the same axis (bench/pull_timeline.py).
Events are coarse (a request, a blob's first and last byte, a layer's phases), never per
entry; without the variable ``event`` does nothing but one test.
"""
from __future__ import annotations

import os
import threading
import time

_PATH = os.environ.get("LAMINA_TRACE")
_fd = None
_lock = threading.Lock()


def event(what, **fields):
    if not _PATH:
        return
    global _fd
    t = time.monotonic()
    line = f"{t:.6f} {threading.current_thread().name} {what}"
    if fields:
        line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
    with _lock:
        if _fd is None:
            _fd = os.open(_PATH, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        os.write(_fd, (line + "\n").encode())


def enabled():
    return bool(_PATH)
