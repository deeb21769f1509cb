"""Annotate a camera, a stream or a video file in real time, with the annotation job's detector, classifier and
tracker. Rows come out in the job's faces schema: as CSV on stdout, or into a .parquet / .csv file.

    fer-video live 0                                # the first camera; CSV rows on stdout
    fer-video live rtsp://camera.local/stream --out rows.parquet
    fer-video live interview.mp4 --max-frames 300 --out rows.csv --no-show

A preview window opens when a display exists (DISPLAY / WAYLAND_DISPLAY; --no-show never, --show says why not)
and OpenCV has GUI support (opencv-python-headless, this project's dependency, has none: annotation goes on).
Stop with q in the window or Ctrl-C; rows written so far are kept. Exit code: 0 done, 1 bad arguments or source.
The same command runs as ``python jobs/live.py`` from a checkout.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

import typer

from fer_video._common import fail, make_detector

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)

CHUNK_FRAMES = 30
"""Frames between writes to a --out file (stdout gets every frame at once)."""


@app.command()
def main(
    source: str = typer.Argument(..., help="Camera index (0), stream URL (rtsp://, http://...) or video file."),
    model: Optional[str] = typer.Option(None, help="Classifier checkpoint folder (default: the model shipped with the package)."),
    detector: str = typer.Option("auto", help="Face detector: auto or yunet (the YuNet shipped in the package), or haar (only when asked for)."),
    detector_model: Optional[str] = typer.Option(None, help="Another copy of the YuNet ONNX (default: $FER_YUNET_MODEL, else the one shipped in the package)."),
    detector_engine: str = typer.Option("auto", help="What runs YuNet: auto (ONNX Runtime where installed, else OpenCV), onnxruntime or opencv; the same faces, ONNX Runtime about twice as fast."),
    detect_max_side: int = typer.Option(640, help="Longest side of the downscaled frame used for detection."),
    min_face_px: int = typer.Option(20, help="Ignore faces smaller than this many pixels."),
    score_threshold: float = typer.Option(0.8, help="Minimum face detector score (YuNet)."),
    device: str = typer.Option("auto", help="Classifier device: auto (GPU if present), cpu or gpu."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Write rows to this .parquet or .csv file instead of stdout."),
    max_frames: int = typer.Option(0, help="Stop after annotating this many frames; 0 = until the source ends."),
    fps: float = typer.Option(5.0, help="Frames annotated per second of source time; 0 = every frame."),
    show: Optional[bool] = typer.Option(None, "--show/--no-show", help="Show a preview window (needs a display and OpenCV with GUI); default: when a display exists."),
) -> None:
    """Annotate a camera, stream or video file in real time; rows in the faces schema of jobs/annotate.py."""
    # Before OpenCV is first imported; here, not at import, so other fer-video commands keep OpenCV's warnings.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # OpenCV's own warnings would bury the one-line error
    from fer_core.config import AnnotateOptions, OptionError
    from fer_core.live import SourceError, open_capture, parse_source

    try:
        opts = AnnotateOptions(fps=fps, detector=detector, detector_model=detector_model, detector_engine=detector_engine,
                               detect_max_side=detect_max_side, min_face_px=min_face_px,
                               score_threshold=score_threshold, model=model, device=device)
    except OptionError as e:
        raise fail(str(e))
    if max_frames < 0:
        raise fail(f"--max-frames must be >= 0 (0 = no limit), got {max_frames}")
    if out is not None and not out.lower().endswith((".parquet", ".csv")):
        raise fail(f"--out must end in .parquet or .csv, got {out!r}")
    try:
        src = parse_source(source)
        capture = open_capture(src)
    except SourceError as e:
        raise fail(str(e))

    from fer_core.checkpoint import CheckpointError, load_classifier
    from fer_core.detect import DetectorError
    from fer_core.live import FrameAnnotator, LiveSession, Preview, RowWriter

    try:
        classifier = load_classifier(opts.model, device={"gpu": "cuda"}.get(opts.device, opts.device))
        det = make_detector(opts)
        annotator = FrameAnnotator(det, classifier, video_id=src.video_id, video_path=src.video_path)
        metadata = {"model": classifier.model_id, "detector": det.describe(), "source": src.video_path,
                    "options": {"fps": opts.fps, "max_frames": max_frames}}
        writer = RowWriter(out if out is not None else sys.stdout.buffer, metadata)
    except (CheckpointError, DetectorError, ValueError, OSError) as e:
        capture.release()
        raise fail(str(e))

    session = LiveSession(
        annotator, capture, src, writer, Preview(show is not False, explain=show is True), sample_fps=opts.fps,
        max_frames=max_frames, chunk_frames=CHUNK_FRAMES if out is not None else 1,
        on_note=lambda note: typer.echo(f"note: {note}", err=True),
    )
    started = time.perf_counter()
    try:
        session.run()
    except KeyboardInterrupt:
        typer.echo("stopped (Ctrl-C)", err=True)
    except SourceError as e:
        raise fail(str(e))
    finally:
        capture.release()
    seconds = time.perf_counter() - started
    where = f", wrote {writer.rows} rows to {out}" if out is not None else ""
    typer.echo(f"{session.frames} frames, {session.faces} faces, "
               f"{session.frames / seconds if seconds > 0 else 0:.1f} frames/s{where}", err=True)
