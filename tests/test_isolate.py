"""The child-process runner that keeps a hung or crashing decoder from taking the job down."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fer_core import isolate  # noqa: E402
from fer_core.isolate import IsolatedCrash, IsolatedError, IsolatedTimeout, child_pid, run_isolated  # noqa: E402
from isolate_targets import count, crash, hang, hold_memory, pid, raise_after  # noqa: E402


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


def test_one_child_serves_call_after_call_and_survives_errors_in_fn():
    first = list(run_isolated(pid, timeout_s=60))
    assert child_pid() == first[0]
    with pytest.raises(IsolatedError):
        list(run_isolated(raise_after, 1, timeout_s=60))
    assert list(run_isolated(pid, timeout_s=60)) == first  # an exception in fn leaves the child usable


def test_a_crashed_hung_or_abandoned_child_is_replaced():
    before = list(run_isolated(pid, timeout_s=60))[0]
    with pytest.raises(IsolatedCrash):
        list(run_isolated(crash, timeout_s=60))
    assert child_pid() is None
    after_crash = list(run_isolated(pid, timeout_s=60))[0]
    assert after_crash != before
    with pytest.raises(IsolatedTimeout):
        list(run_isolated(hang, timeout_s=1))
    after_hang = list(run_isolated(pid, timeout_s=60))[0]
    assert after_hang != after_crash
    stream = run_isolated(count, 1000, timeout_s=60)
    assert next(stream) == 0
    stream.close()  # the caller stops reading mid-stream: the child still holds the rest, so it goes
    assert child_pid() is None
    assert list(run_isolated(count, 3, timeout_s=60)) == [0, 1, 2]


def test_the_child_exits_when_its_parent_closes_the_pipe():
    list(run_isolated(pid, timeout_s=60))
    child = isolate._LOCAL.child
    child.conn.close()
    child.proc.join(10)
    assert child.proc.exitcode == 0
    isolate._LOCAL.child = None


def test_a_child_holding_too_much_memory_after_a_call_is_replaced(monkeypatch):
    isolate._discard_child()
    first = [list(run_isolated(pid, timeout_s=60))[0] for _ in range(3)]
    assert first[0] == first[1] == first[2]  # a child under the limit serves call after call
    held = list(run_isolated(hold_memory, 300, timeout_s=60))[0]
    assert held == first[0]
    monkeypatch.setattr(isolate, "MAX_CHILD_RSS_MB", 200)  # the child now holds about 300 MB more than it did
    list(run_isolated(hold_memory, 0, timeout_s=60))
    assert child_pid() is None  # replaced at the end of that call
    assert list(run_isolated(pid, timeout_s=60))[0] != first[0]


def test_a_child_is_replaced_after_its_quota_of_calls(monkeypatch):
    monkeypatch.setattr(isolate, "MAX_CALLS_PER_CHILD", 2)
    isolate._discard_child()
    pids = [list(run_isolated(pid, timeout_s=60))[0] for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
