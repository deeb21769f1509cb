"""Human-readable progress and the closing summary of an annotation run."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from fer_core.output import VideoResult


def progress_line(result: VideoResult, done: int, total: int) -> str:
    """One line per committed video."""
    r = result.video_row
    name = os.path.basename(r["video_path"].rstrip("/"))
    if r["status"] == "ok":
        return (f"[{done}/{total}] ok     {name}: {r['frames_sampled']} frames, {r['faces']} faces, "
                f"{r['seconds']:.1f} s")
    return f"[{done}/{total}] FAILED {name}: {r['error']}"


class Progress:
    """The console while a run commits videos: ``bar`` one tqdm bar (videos done / to do, frames/s, ETA, failures;
    a failed video's line is printed above it), ``lines`` one :func:`progress_line` per video, ``off`` nothing."""

    MODES = ("bar", "lines", "off")

    def __init__(self, mode: str, stream: TextIO | None = None) -> None:
        if mode not in self.MODES:
            raise ValueError(f"progress mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.mode = mode
        self.stream = stream if stream is not None else sys.stderr
        self.frames = 0
        self.failed = 0
        self._bar: Any = None
        self._started = time.perf_counter()

    def start(self, total: int) -> None:
        """Called once with the number of videos to do (videos done by an earlier run don't count)."""
        self._started = time.perf_counter()
        if self.mode == "bar" and total > 0:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, unit="video", desc="videos", file=self.stream, dynamic_ncols=True,
                bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}{postfix}", postfix=self._postfix(),
            )

    def video(self, result: VideoResult, done: int, total: int) -> None:
        """Called after each committed video with (result, videos done, videos to do)."""
        row = result.video_row
        self.frames += row["frames_sampled"] or 0
        self.failed += row["status"] != "ok"
        if self._bar is not None:
            if row["status"] != "ok":
                self._bar.write(progress_line(result, done, total), file=self.stream)
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(1)
        elif self.mode == "lines":
            print(progress_line(result, done, total), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _postfix(self) -> str:
        seconds = time.perf_counter() - self._started
        fps = self.frames / seconds if seconds > 0 else 0.0
        return f"{fps:.1f} frames/s, {self.failed} failed"


def summary_text(summary: Any, out: str) -> str:
    """The closing table: videos ok / failed / skipped, frames, faces, wall time, frames per second."""
    ok = len(summary.results) - len(summary.failed)
    fps = summary.frames / summary.wall_s if summary.wall_s > 0 else 0.0
    lines = [
        "",
        f"videos ok      {ok}",
        f"videos failed  {len(summary.failed)}",
        f"videos skipped {summary.skipped} (done by an earlier run)",
        f"frames         {summary.frames}",
        f"faces          {summary.faces}",
        f"wall time      {summary.wall_s:.1f} s",
        f"frames/s       {fps:.1f}",
        f"output         {out}",
    ]
    for r in summary.failed:
        lines.append(f"failed: {r['video_path']}: {r['error']}")
    return "\n".join(lines)


def print_summary(summary: Any, out: str) -> None:
    print(summary_text(summary, out), flush=True)
