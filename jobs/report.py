"""Report on a run: one self-contained HTML page with the videos table (failures highlighted) and, per finished
video, its summary and the seven probabilities of each face track over time.

    python jobs/report.py timelines/ --html report.html
    python jobs/report.py s3://bucket/timelines --html report.html --png-dir plots/ --smooth-s 2

Exit code: 0 the page is written, 1 the timelines cannot be read or the page cannot be written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs._common import fail  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)



@app.command()
def main(
    out: str = typer.Argument(..., help="The --out folder (or bucket URI) of jobs/annotate.py."),
    html: Path = typer.Option(Path("report.html"), "--html", help="The HTML page to write."),
    png_dir: Optional[Path] = typer.Option(None, "--png-dir", help="Also write each plot as a PNG file here."),
    smooth_s: float = typer.Option(1.0, "--smooth-s", help="Smooth the plotted probabilities over this many seconds of video time; 0 = raw."),
    max_tracks: int = typer.Option(6, "--max-tracks", help="Plot at most this many tracks per video (the longest)."),
) -> None:
    """Write an HTML report of a run's timelines."""
    if not smooth_s >= 0:
        raise fail(f"--smooth-s must be >= 0 seconds, got {smooth_s!r}")
    if max_tracks < 1:
        raise fail(f"--max-tracks must be >= 1, got {max_tracks!r}")
    from fer_core.analysis import TimelineError, load_timelines
    from fer_core.report_page import build_report

    try:
        faces, videos = load_timelines(out)
    except TimelineError as e:
        raise fail(str(e))
    report = build_report(faces, videos, smooth_s=smooth_s, max_tracks=max_tracks, title=out)
    try:
        html.write_text(report.html, encoding="utf-8")
        if png_dir is not None:
            png_dir.mkdir(parents=True, exist_ok=True)
            for name, data in report.pngs.items():
                (png_dir / name).write_bytes(data)
    except OSError as e:
        raise fail(f"cannot write the report: {e.strerror or e} ({e.filename or html})")
    failed = int((videos["status"] != "ok").sum())
    typer.echo(f"wrote {html} ({len(videos)} videos, {failed} failed, {len(report.pngs)} plots"
               f"{f' also in {png_dir}' if png_dir is not None else ''})")


if __name__ == "__main__":
    app()
