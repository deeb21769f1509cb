"""Render a video with its timelines drawn on every frame: face boxes, track ids, the emotion and its confidence,
interpolated between the frames the job sampled. Same frame count, frame rate and timestamps as the source.

    fer-video render interview.mp4 --timelines timelines/ --out interview_annotated.mp4

The video is found in the timelines by its video id (the path the job was given) or, failing that, by file name.
Exit code: 0 written, 1 the video or the timelines cannot be read, or the video is not in them.
The same command runs as ``python jobs/render.py`` from a checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from fer_video._common import fail

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command()
def main(
    video: str = typer.Argument(..., help="The local video file to render."),
    timelines: str = typer.Option(..., "--timelines", "-t", help="The --out folder (or bucket URI) of jobs/annotate.py that holds this video."),
    out: Path = typer.Option(..., "--out", "-o", help="The annotated video to write (.mp4)."),
    smooth_s: float = typer.Option(0.0, "--smooth-s", help="Smooth each track's probabilities over this many seconds of video time first; 0 = as the job wrote them."),
    codec: str = typer.Option("auto", help="Video codec: auto (libx264 where available), libx264 or mpeg4."),
    decoder: str = typer.Option("auto", help="Video decoder: auto (decord, PyAV fallback), decord or pyav."),
) -> None:
    """Draw a video's timelines (boxes, track ids, emotion and confidence) on every frame and re-encode it."""
    if not smooth_s >= 0:
        raise fail(f"--smooth-s must be >= 0 seconds, got {smooth_s!r}")
    if codec not in ("auto", "libx264", "mpeg4"):
        raise fail(f"--codec must be one of auto, libx264, mpeg4, got {codec!r}")
    if decoder not in ("auto", "decord", "pyav"):
        raise fail(f"--decoder must be one of auto, decord, pyav, got {decoder!r}")
    if not os.path.isfile(video):
        raise fail(f"video {video!r} does not exist" if not os.path.exists(video) else f"{video!r} is not a file")
    from fer_core.analysis import TimelineError, load_timelines, match_video, smooth_tracks
    from fer_core.overlay import RenderError, render_video
    from fer_core.video import VideoError

    try:
        faces, videos = load_timelines(timelines)
        row, how = match_video(videos, video)
    except TimelineError as e:
        raise fail(str(e))
    if row["status"] != "ok":
        raise fail(f"the job marked {row['video_path']!r} failed ({row['error']}); it has no faces to draw")
    if how == "name":
        typer.echo(f"matched {os.path.basename(video)!r} by file name: the timelines were made from {row['video_path']!r}", err=True)
    rows = faces[faces["video_id"] == row["video_id"]]
    if smooth_s > 0:
        rows = smooth_tracks(rows, window_s=smooth_s)
    try:
        stats = render_video(video, rows, str(out), codec=codec, decoder=decoder)
    except (VideoError, RenderError) as e:
        raise fail(" ".join(str(e).split()))
    typer.echo(f"wrote {out}: {stats.frames} frames ({stats.frames_with_faces} with faces) at {stats.fps:.3f} fps, "
               f"{stats.codec}, {stats.seconds:.1f} s")
