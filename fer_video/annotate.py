"""Annotate videos: per-frame emotion timelines in Parquet.

    fer-video annotate videos/ --out timelines/          # or: python jobs/annotate.py videos/ --out timelines/
    ray job submit --working-dir . -- python jobs/annotate.py s3://bucket/videos --out s3://bucket/timelines

On a terminal one progress bar shows videos done, frames/s, the ETA and failures; otherwise one line per video.
Exit code: 0 all videos ok, 2 some videos failed (listed in the summary), 1 the job itself failed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import typer

from fer_video._common import fail, make_detector

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command()
def main(
    inputs: list[str] = typer.Argument(..., help="Video files, folders (searched recursively) or s3:// / gs:// URIs."),
    out: str = typer.Option("timelines", "--out", "-o", help="Output folder or bucket URI (faces/ and videos/ tables)."),
    fps: float = typer.Option(5.0, help="Frames sampled per second of video; 0 = every frame."),
    detector: str = typer.Option("auto", help="Face detector: auto or yunet (the YuNet shipped in the package), or haar (only when asked for)."),
    detector_model: Optional[str] = typer.Option(None, help="Another copy of the YuNet ONNX (default: $FER_YUNET_MODEL, else the one shipped in the package)."),
    detector_engine: str = typer.Option("auto", help="What runs YuNet: auto (ONNX Runtime where installed, else OpenCV), onnxruntime or opencv; the same faces, ONNX Runtime about twice as fast."),
    detect_max_side: int = typer.Option(640, help="Longest side of the downscaled frame used for detection."),
    detect_every: int = typer.Option(0, help="Full-frame face detection on every k-th sampled frame at least, a window around each tracked face in between; 1 = every sampled frame, 0 = auto (every 0.25 s of video)."),
    min_face_px: int = typer.Option(20, help="Ignore faces smaller than this many pixels."),
    score_threshold: float = typer.Option(0.8, help="Minimum face detector score (YuNet)."),
    decoder: str = typer.Option("auto", help="Video decoder: auto (PyAV, decord fallback), decord or pyav."),
    segment_s: float = typer.Option(120.0, help="Split videos into segments of this many seconds processed in parallel; 0 = never."),
    segment_timeout_s: float = typer.Option(600.0, help="Fail a segment (and its video) that takes longer than this."),
    model: Optional[str] = typer.Option(None, help="Classifier checkpoint folder (default: the model shipped with the package)."),
    batch_size: int = typer.Option(256, help="Face crops per classifier batch."),
    device: str = typer.Option("auto", help="Classifier device: auto (GPU when the cluster has one), cpu or gpu."),
    precision: str = typer.Option("auto", help="Classifier arithmetic: auto (bf16 on GPUs and CPUs with native bf16), fp32, bf16 or int8 (CPU; the shipped model is calibrated for it)."),
    classifier_actors: int = typer.Option(0, help="Classifier actors (0 = one per GPU, or one per 8 CPUs)."),
    classifier_cpus: float = typer.Option(0.5, help="CPUs reserved by each CPU classifier actor."),
    decode_label: list[str] = typer.Option([], help="Run decode tasks only on nodes with this Ray label KEY=VALUE (repeatable)."),
    classify_label: list[str] = typer.Option([], help="Run classifier actors only on nodes with this Ray label KEY=VALUE (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete earlier results in --out and start fresh."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output; only the summary."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also Ray's own output: start banner, worker logs, Ray Data progress; and the dashboard of a local Ray."),
) -> None:
    """Turn videos into per-frame emotion timelines: OUT/faces (one row per face per sampled frame) and OUT/videos."""
    if quiet and verbose:
        raise fail("--quiet and --verbose exclude each other; give one")
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    from fer_core.config import AnnotateOptions, OptionError

    try:
        opts = AnnotateOptions(
            fps=fps, detector=detector, detector_model=detector_model, detector_engine=detector_engine, detect_max_side=detect_max_side,
            detect_every=detect_every, min_face_px=min_face_px, score_threshold=score_threshold, decoder=decoder, segment_s=segment_s,
            segment_timeout_s=segment_timeout_s, model=model, batch_size=batch_size, device=device, precision=precision,
            classifier_actors=classifier_actors, classifier_cpus=classifier_cpus,
            decode_labels=tuple(decode_label), classify_labels=tuple(classify_label),
        )
    except OptionError as e:
        raise fail(str(e))

    from fer_core.detect import DetectorError
    from fer_core.output import OutputError, OutputStore
    from fer_core.video import InputError, list_inputs

    # The checkpoint is checked in a thread while the inputs are listed and Ray starts: the check imports torch
    # (1.3-2 s on 2 cores), and Ray's start-up is mostly waiting for its processes. No video is touched before it
    # has passed.
    with ThreadPoolExecutor(1) as pool:
        checked = pool.submit(_check_model, opts)
        try:
            videos = list_inputs(inputs)
            det = make_detector(opts)
            OutputStore(out, {}).check_writable()
        except (InputError, DetectorError, OutputError, ValueError) as e:
            raise fail(str(e))
        model_bytes = Path(det.model_path).read_bytes() if hasattr(det, "model_path") else None

        from fer_core.pipeline import annotate, init_ray
        from fer_core.report import Progress, print_summary

        try:
            init_ray(address, verbose=verbose)
        except KeyboardInterrupt:
            typer.echo("interrupted before any work", err=True)
            raise typer.Exit(130)
        except Exception as e:  # no cluster at --address, or Ray could not start
            raise fail(f"Ray did not start: {type(e).__name__}: {' '.join(str(e).split())[:500]}")
        problem = checked.result()
    if problem:
        raise fail(problem)

    # Ray Data's own progress (with --verbose) would fight a bar for the terminal: then one line per video.
    mode = "off" if quiet else "bar" if sys.stderr.isatty() and not verbose else "lines"
    try:
        with Progress(mode) as progress, _logs_above_bar(mode == "bar"):
            summary = annotate(
                videos, out, opts, detector=det, model_bytes=model_bytes, overwrite=overwrite,
                on_video=progress.video, on_start=progress.start,
            )
    except KeyboardInterrupt:
        typer.echo("interrupted: finished videos are committed; run the same command again to resume", err=True)
        raise typer.Exit(130)
    except Exception as e:  # the job itself failed: one line, exit 1
        raise fail(f"the job failed: {type(e).__name__}: {' '.join(str(e).split())[:500]}")
    print_summary(summary, out)
    raise typer.Exit(2 if summary.failed else 0)


def _check_model(opts: object) -> str | None:
    """What is wrong with the classifier checkpoint the options name, or None when it loads (and carries an int8
    calibration, where int8 is asked for): the driver refuses before any work, not each actor later."""
    from fer_core.checkpoint import CheckpointError, load_checkpoint

    try:
        _, meta, model_id = load_checkpoint(opts.model)
        if opts.precision == "int8":
            from fer_core.quantize import require_calibration

            require_calibration(meta, model_id)
    except (CheckpointError, ValueError) as e:
        return str(e)
    return None


def _logs_above_bar(bar: bool) -> contextlib.AbstractContextManager:
    """While a bar is on the terminal, print log lines above it rather than through it."""
    if not bar:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()
