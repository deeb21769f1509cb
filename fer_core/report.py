"""Human-readable progress and the closing summary of an annotation run."""

from __future__ import annotations

import os
from typing import Any

from fer_core.output import VideoResult


def progress_line(result: VideoResult, done: int, total: int) -> str:
    """One line per committed video."""
    r = result.video_row
    name = os.path.basename(r["video_path"].rstrip("/"))
    if r["status"] == "ok":
        return (f"[{done}/{total}] ok     {name}: {r['frames_sampled']} frames, {r['faces']} faces, "
                f"{r['seconds']:.1f} s")
    return f"[{done}/{total}] FAILED {name}: {r['error']}"


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
