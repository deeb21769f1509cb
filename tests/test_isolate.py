"""The child-process runner that keeps a hung or crashing decoder from taking the job down."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fer_core.isolate import IsolatedCrash, IsolatedError, IsolatedTimeout, run_isolated  # noqa: E402
from isolate_targets import count, crash, hang, raise_after  # noqa: E402


def test_streams_items_in_order():
    assert list(run_isolated(count, 50, timeout_s=60)) == list(range(50))


def test_error_in_child_is_one_line_with_items_before_it():
    got = []
    with pytest.raises(IsolatedError, match="bad frame data at frame 3") as e:
        for item in run_isolated(raise_after, 3, timeout_s=60):
            got.append(item)
    assert got == [0, 1, 2] and e.value.type_name == "ValueError"


def test_hang_is_stopped_at_the_limit():
    started = time.monotonic()
    with pytest.raises(IsolatedTimeout, match="timed out after 2 s"):
        list(run_isolated(hang, timeout_s=2))
    assert time.monotonic() - started < 20


def test_native_crash_is_reported():
    with pytest.raises(IsolatedCrash, match="died"):
        list(run_isolated(crash, timeout_s=60))
