"""What the commands share: the one-line error and building the face detector from options."""

from __future__ import annotations

from typing import Any

import typer


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def make_detector(opts: Any) -> Any:
    """The face detector an options object asks for (fields detector, detector_model, detect_max_side,
    min_face_px, score_threshold, detector_engine).

    Raises:
        fer_core.detect.DetectorError: when the asked-for detector can't be built.
    """
    from fer_core.detect import create_detector

    return create_detector(
        opts.detector, opts.detector_model, max_side=opts.detect_max_side, min_face_px=opts.min_face_px,
        score_threshold=opts.score_threshold, engine=opts.detector_engine,
    )
