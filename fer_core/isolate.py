"""Run a generator in a child process with a time limit, so a decoder that hangs or crashes fails one
segment instead of the job.

decord can hang while holding the GIL and a damaged file can crash FFmpeg outright; neither can be stopped
from a Python thread in the same process. The child is forked from a forkserver (never from the caller, which
may be a multi-threaded Ray worker) and streams its items back through a pipe.
"""

from __future__ import annotations

import multiprocessing as mp
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


def _child(conn: Any, fn: Callable[..., Iterator[Any]], args: tuple, kwargs: dict) -> None:
    try:
        for item in fn(*args, **kwargs):
            conn.send(item)
        conn.send((_DONE, None, None))
    except BaseException as e:  # report everything, including KeyboardInterrupt, to the parent
        conn.send((_ERROR, type(e).__name__, str(e) or traceback.format_exc(limit=1).strip()))
    finally:
        conn.close()


_CONTEXT: Any = None


def _context() -> Any:
    global _CONTEXT  # one forkserver per process, started on first use
    if _CONTEXT is None:
        _CONTEXT = mp.get_context("forkserver")
        # Every segment forks a fresh child: preload what process_segment needs, so no child imports it again.
        _CONTEXT.set_forkserver_preload(["numpy", "cv2", "fer_core.segment", "fer_core.video", "fer_core.detect", "decord"])
    return _CONTEXT


def run_isolated(
    fn: Callable[..., Iterator[Any]], *args: Any, timeout_s: float, **kwargs: Any
) -> Iterator[Any]:
    """Yield what ``fn(*args, **kwargs)`` yields, computed in a child process.

    Raises:
        IsolatedTimeout: when the whole run takes longer than ``timeout_s``.
        IsolatedCrash: when the child exits without finishing.
        IsolatedError: when ``fn`` raises.
    """
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, kwargs), daemon=True)
    proc.start()
    child.close()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not parent.poll(min(left, 1.0)):
                if left <= 0:
                    raise IsolatedTimeout(f"timed out after {timeout_s:g} s (decoder hung or the segment is too long; raise --segment-timeout-s or lower --segment-s)")
                if not proc.is_alive() and not parent.poll(0):
                    raise IsolatedCrash(f"decoder process died (exit code {proc.exitcode})")
                continue
            try:
                item = parent.recv()
            except EOFError:
                proc.join(5)
                raise IsolatedCrash(f"decoder process died (exit code {proc.exitcode})") from None
            if isinstance(item, tuple) and len(item) == 3 and item[0] in (_DONE, _ERROR):
                if item[0] == _ERROR:
                    raise IsolatedError(item[2], item[1])
                return
            yield item
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        parent.close()
