"""Report on a run: one self-contained HTML page with the videos table (failures highlighted) and, per finished
video, its summary, the seven probabilities of each face track over time and its emotion episodes. Only usable
faces count (frontal, sharp, big enough, inside the frame; fer_core.analysis.UsableRule) when the timelines
record head pose and quality, and the page says how many face-frames that dropped.

    fer-video report timelines/ --html report.html
    fer-video report s3://bucket/timelines --html report.html --png-dir plots/ --smooth-s 2 --all-faces

Exit code: 0 the page is written, 1 the timelines cannot be read or the page cannot be written.
The same command runs as ``python jobs/report.py`` from a checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fer_video._common import fail

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command()
def main(
    out: str = typer.Argument(..., help="The --out folder (or bucket URI) of jobs/annotate.py."),
    html: Path = typer.Option(Path("report.html"), "--html", help="The HTML page to write."),
    png_dir: Optional[Path] = typer.Option(None, "--png-dir", help="Also write each plot as a PNG file here."),
    smooth_s: float = typer.Option(1.0, "--smooth-s", help="Smooth the probabilities (plots, episodes) over this many seconds of video time; 0 = raw."),
    max_tracks: int = typer.Option(6, "--max-tracks", help="Plot at most this many tracks per video (the longest)."),
    usable: Optional[bool] = typer.Option(
        None, "--usable/--all-faces",
        help="Count only usable faces (frontal, sharp, big enough, inside the frame: the defaults of "
             "fer_core.analysis.UsableRule), or all. Default: usable when the timelines record head pose and "
             "quality, else all."),
    min_episode_s: float = typer.Option(2.0, "--min-episode-s", help="List emotion episodes of at least this many seconds."),
    max_gap_s: float = typer.Option(1.0, "--max-gap-s", help="A track unseen for longer than this many seconds ends an episode."),
) -> None:
    """Write an HTML report of a run's timelines."""
    if not smooth_s >= 0:
        raise fail(f"--smooth-s must be >= 0 seconds, got {smooth_s!r}")
    if max_tracks < 1:
        raise fail(f"--max-tracks must be >= 1, got {max_tracks!r}")
    if not 0 <= min_episode_s < float("inf"):
        raise fail(f"--min-episode-s must be >= 0 seconds, got {min_episode_s!r}")
    if not max_gap_s >= 0:
        raise fail(f"--max-gap-s must be >= 0 seconds, got {max_gap_s!r}")
    from fer_core.analysis import TimelineError, UsableRule, load_timelines
    from fer_core.report_page import build_report

    try:
        faces, videos = load_timelines(out)
    except TimelineError as e:
        raise fail(str(e))
    rule = UsableRule()
    missing = rule.missing_columns(faces)
    if usable and missing:
        raise fail(f"--usable needs the columns {', '.join(missing)}, which these timelines lack (written before "
                   "jobs/annotate.py recorded head pose and quality): re-run it with --overwrite, or pass --all-faces")
    report = build_report(faces, videos, smooth_s=smooth_s, max_tracks=max_tracks, title=out,
                          usable=rule if usable is not False and not missing else None,
                          min_episode_s=min_episode_s, max_gap_s=max_gap_s)
    try:
        html.write_text(report.html, encoding="utf-8")
        if png_dir is not None:
            png_dir.mkdir(parents=True, exist_ok=True)
            for name, data in report.pngs.items():
                (png_dir / name).write_bytes(data)
    except OSError as e:
        raise fail(f"cannot write the report: {e.strerror or e} ({e.filename or html})")
    failed = int((videos["status"] != "ok").sum())
    counted = ("all faces counted" if report.faces_dropped is None
               else f"usable faces only, {report.faces_dropped} face-frames dropped")
    typer.echo(f"wrote {html} ({len(videos)} videos, {failed} failed, {len(report.pngs)} plots"
               f"{f' also in {png_dir}' if png_dir is not None else ''}, {report.episodes} episodes, {counted})")
