"""Generators run in child processes by tests/test_isolate.py (importable by the forkserver)."""

from __future__ import annotations

import os
import signal
import time


def count(n: int):
    yield from range(n)


def raise_after(n: int):
    yield from range(n)
    raise ValueError("bad frame data at frame 3")


def hang():
    yield "started"
    time.sleep(3600)


def crash():
    yield "started"
    os.kill(os.getpid(), signal.SIGSEGV)


def pid():
    yield os.getpid()


_HELD: list[bytes] = []


def hold_memory(mb: int):
    """Keep ``mb`` more megabytes referenced in the child (a leak that outlives the call); yields the child's pid."""
    if mb:
        _HELD.append(b"\x01" * (mb << 20))
    yield os.getpid()
