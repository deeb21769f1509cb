"""Run a generator in a child process with a time limit, so a decoder that hangs or crashes fails one
segment instead of the job.

decord can hang while holding the GIL and a damaged file can crash FFmpeg outright; neither can be stopped
from a Python thread in the same process. The child is forked from a forkserver (never from the caller, which
may be a multi-threaded Ray worker) and streams its items back through a pipe.

The child is reused: each calling thread keeps one child that runs call after call, and only a child that timed
out, crashed, was abandoned mid-stream or still holds over `MAX_CHILD_RSS_MB` after a call is killed and replaced.
A fresh child costs about a third of a CPU-second, because multiprocessing re-imports the caller's main module in
it (in a Ray worker that is Ray itself), and it left each worker idle for 0.4-0.9 s between segments.

The child also keeps the arguments of its recent calls: an argument that pickles to the same bytes as one it has
already unpickled is reused, not unpickled again. The face detector comes with every segment, and a fresh copy of
it rebuilt its OpenCV network for each one (4-5 ms of CPU, as much as detecting faces in a small still image).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

_DONE = "__done__"
_ERROR = "__error__"


class IsolatedTimeout(RuntimeError):
    """The child ran past its time limit and was killed."""


class IsolatedCrash(RuntimeError):
    """The child died without finishing (a crash in native code, killed for memory, ...)."""


class IsolatedError(RuntimeError):
    """The generator raised in the child; the message is the child's exception in one line."""

    def __init__(self, message: str, type_name: str) -> None:
        super().__init__(message)
        self.type_name = type_name


_ARG_CACHE_SIZE = 16
"""Unpickled arguments a child keeps, keyed by their pickled bytes."""


def _pickle_args(args: tuple, kwargs: dict[str, Any]) -> tuple[list[bytes], dict[str, bytes]]:
    return [pickle.dumps(a, pickle.HIGHEST_PROTOCOL) for a in args], {
        k: pickle.dumps(v, pickle.HIGHEST_PROTOCOL) for k, v in kwargs.items()}


def _serve(conn: Any) -> None:
    """The child's loop: run each (fn, args, kwargs) received, stream its items, end with DONE or ERROR.

    Arguments arrive pickled one by one; one whose bytes match a recent call's is that call's object again (callees
    must not change their arguments, which ``process_segment`` doesn't).
    """
    cache: dict[bytes, Any] = {}

    def load(blob: bytes) -> Any:
        if blob not in cache:
            if len(cache) >= _ARG_CACHE_SIZE:
                cache.pop(next(iter(cache)))  # the oldest
            cache[blob] = pickle.loads(blob)
        return cache[blob]

    while True:
        try:
            fn, blobs, kwblobs = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died: nothing more to do
            return
        try:
            args = [load(b) for b in blobs]
            kwargs = {k: load(b) for k, b in kwblobs.items()}
            for item in fn(*args, **kwargs):
                conn.send(item)
            reply = (_DONE, None, None)
        except BaseException as e:  # report everything, including KeyboardInterrupt, to the parent
            reply = (_ERROR, type(e).__name__, str(e) or traceback.format_exc(limit=1).strip())
        args = kwargs = item = None  # nothing of this call stays referenced while the child waits
        _trim_heap()  # before the reply, so the parent reads the child's memory as it will stay
        conn.send(reply)


def _trim_heap() -> None:
    """Give the heap's free pages back to the system (glibc only; elsewhere nothing).

    A call's frames (megabytes each) are freed when it ends, but glibc keeps freed heap memory, so without this a
    child's resident size wandered by about 40 MB from one call to the next (164-206 MB over a 60-minute video).
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - absent outside glibc
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


_CONTEXT: Any = None


def _context() -> Any:
    global _CONTEXT  # one forkserver per process, started on first use
    if _CONTEXT is None:
        _CONTEXT = mp.get_context("forkserver")
        # Preload what process_segment needs, so no child imports it again.
        _CONTEXT.set_forkserver_preload(["numpy", "cv2", "fer_core.segment", "fer_core.video", "fer_core.detect", "decord"])
    return _CONTEXT


class _Child:
    """One child process serving calls over a duplex pipe."""

    def __init__(self) -> None:
        self.calls = 0
        ctx = _context()
        self.conn, child_end = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_serve, args=(child_end,), daemon=True)
        self.proc.start()
        child_end.close()

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


_LOCAL = threading.local()

MAX_CHILD_RSS_MB = 1024
"""A child still holding more than this much resident memory once a call has ended (its heap trimmed) is replaced,
so memory a decoder leaks cannot pile up over a long run. Between calls a child holds about 100-150 MB."""

MAX_CALLS_PER_CHILD = 100_000
"""A child is also replaced after this many calls (the only limit where /proc can't tell its memory). It used to be
every 64 calls: over still images, isolated decoding then took 26 ms per input against 5 ms without replacements
(a caller whose main module imports torch), and 1,000 stills took 17.9 s in the job against 15.1 s now."""


def _rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux); None where it can't be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _child() -> _Child:
    child = getattr(_LOCAL, "child", None)
    if child is not None and child.calls >= MAX_CALLS_PER_CHILD:
        _discard_child()
        child = None
    if child is None or not child.alive():
        child = _LOCAL.child = _Child()
    child.calls += 1
    return child


def _recycle_if_large(child: _Child) -> None:
    rss = _rss_mb(child.proc.pid)
    if rss is not None and rss > MAX_CHILD_RSS_MB:
        _discard_child()


def _discard_child() -> None:
    child = getattr(_LOCAL, "child", None)
    _LOCAL.child = None
    if child is not None:
        child.kill()


def child_pid() -> int | None:
    """The pid of this thread's child process, if one is running (for tests and diagnostics)."""
    child = getattr(_LOCAL, "child", None)
    return child.proc.pid if child is not None and child.alive() else None


def run_isolated(
    fn: Callable[..., Iterator[Any]], *args: Any, timeout_s: float, **kwargs: Any
) -> Iterator[Any]:
    """Yield what ``fn(*args, **kwargs)`` yields, computed in this thread's child process.

    ``fn`` and its arguments must be picklable by reference (module-level functions).

    Raises:
        IsolatedTimeout: when the whole run takes longer than ``timeout_s``.
        IsolatedCrash: when the child exits without finishing.
        IsolatedError: when ``fn`` raises (the child lives on).
    """
    child = _child()
    deadline = time.monotonic() + timeout_s
    finished = False
    try:
        try:
            child.conn.send((fn, *_pickle_args(args, kwargs)))
        except (BrokenPipeError, OSError):
            raise IsolatedCrash(f"decoder process died (exit code {child.proc.exitcode})") from None
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not child.conn.poll(min(left, 1.0)):
                if left <= 0:
                    raise IsolatedTimeout(f"timed out after {timeout_s:g} s (decoder hung or the segment is too long; raise --segment-timeout-s or lower --segment-s)")
                if not child.alive() and not child.conn.poll(0):
                    raise IsolatedCrash(f"decoder process died (exit code {child.proc.exitcode})")
                continue
            try:
                item = child.conn.recv()
            except EOFError:
                child.proc.join(5)
                raise IsolatedCrash(f"decoder process died (exit code {child.proc.exitcode})") from None
            if isinstance(item, tuple) and len(item) == 3 and item[0] in (_DONE, _ERROR):
                finished = True
                _recycle_if_large(child)
                if item[0] == _ERROR:
                    raise IsolatedError(item[2], item[1])
                return
            yield item
    finally:
        if not finished:  # timed out, crashed, or the caller stopped reading mid-stream: the child can't be reused
            _discard_child()
