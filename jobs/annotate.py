"""Annotate videos: per-frame emotion timelines in Parquet.

    python jobs/annotate.py videos/ --out timelines/
    ray job submit --working-dir . -- python jobs/annotate.py s3://bucket/videos --out s3://bucket/timelines

Exit code: 0 all videos ok, 2 some videos failed (listed in the summary), 1 the job itself failed.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs._common import fail, make_detector  # noqa: E402

from fer_core.config import AnnotateOptions, OptionError  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)



@app.command()
def main(
    inputs: list[str] = typer.Argument(..., help="Video files, folders (searched recursively) or s3:// / gs:// URIs."),
    out: str = typer.Option("timelines", "--out", "-o", help="Output folder or bucket URI (faces/ and videos/ tables)."),
    fps: float = typer.Option(5.0, help="Frames sampled per second of video; 0 = every frame."),
    detector: str = typer.Option("auto", help="Face detector: auto, yunet or haar."),
    detector_model: Optional[str] = typer.Option(None, help="YuNet ONNX file (else $FER_YUNET_MODEL, cache, download)."),
    detect_max_side: int = typer.Option(640, help="Longest side of the downscaled frame used for detection."),
    min_face_px: int = typer.Option(20, help="Ignore faces smaller than this many pixels."),
    score_threshold: float = typer.Option(0.8, help="Minimum face detector score (YuNet)."),
    decoder: str = typer.Option("auto", help="Video decoder: auto (decord, PyAV fallback), decord or pyav."),
    segment_s: float = typer.Option(120.0, help="Split videos into segments of this many seconds processed in parallel; 0 = never."),
    segment_timeout_s: float = typer.Option(600.0, help="Fail a segment (and its video) that takes longer than this."),
    model: Optional[str] = typer.Option(None, help="Classifier checkpoint folder (default: the model shipped with the package)."),
    batch_size: int = typer.Option(256, help="Face crops per classifier batch."),
    device: str = typer.Option("auto", help="Classifier device: auto (GPU when the cluster has one), cpu or gpu."),
    precision: str = typer.Option("auto", help="Classifier arithmetic: auto (bf16 on GPUs and CPUs with native bf16), fp32 or bf16."),
    classifier_actors: int = typer.Option(0, help="Classifier actors (0 = one per GPU, or one per 8 CPUs)."),
    classifier_cpus: float = typer.Option(0.5, help="CPUs reserved by each CPU classifier actor."),
    decode_label: list[str] = typer.Option([], help="Run decode tasks only on nodes with this Ray label KEY=VALUE (repeatable)."),
    classify_label: list[str] = typer.Option([], help="Run classifier actors only on nodes with this Ray label KEY=VALUE (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete earlier results in --out and start fresh."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars; only the summary."),
) -> None:
    """Turn videos into per-frame emotion timelines: OUT/faces (one row per face per sampled frame) and OUT/videos."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        opts = AnnotateOptions(
            fps=fps, detector=detector, detector_model=detector_model, detect_max_side=detect_max_side,
            min_face_px=min_face_px, score_threshold=score_threshold, decoder=decoder, segment_s=segment_s,
            segment_timeout_s=segment_timeout_s, model=model, batch_size=batch_size, device=device, precision=precision,
            classifier_actors=classifier_actors, classifier_cpus=classifier_cpus,
            decode_labels=tuple(decode_label), classify_labels=tuple(classify_label),
        )
    except OptionError as e:
        raise fail(str(e))

    from fer_core.checkpoint import CheckpointError, load_checkpoint
    from fer_core.detect import DetectorError
    from fer_core.output import OutputError, OutputStore
    from fer_core.video import InputError, list_inputs

    try:
        videos = list_inputs(inputs)
        load_checkpoint(opts.model)
        det = make_detector(opts)
        OutputStore(out, {}).check_writable()
    except (InputError, CheckpointError, DetectorError, OutputError, ValueError) as e:
        raise fail(str(e))
    model_bytes = Path(det.model_path).read_bytes() if hasattr(det, "model_path") else None

    from fer_core.report import print_summary, progress_line

    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1" if quiet else "0")
    ray.init(address=address, log_to_driver=not quiet, logging_level=logging.WARNING, ignore_reinit_error=True)
    if quiet:
        ray.data.DataContext.get_current().enable_progress_bars = False
    from fer_core.pipeline import annotate

    try:
        summary = annotate(
            videos, out, opts, detector=det, model_bytes=model_bytes, overwrite=overwrite,
            on_video=lambda r, i, n: typer.echo(progress_line(r, i, n), err=True),
        )
    except KeyboardInterrupt:
        typer.echo("interrupted: finished videos are committed; run the same command again to resume", err=True)
        raise typer.Exit(130)
    except Exception as e:  # the job itself failed: one line, exit 1
        raise fail(f"the job failed: {type(e).__name__}: {' '.join(str(e).split())[:500]}")
    print_summary(summary, out)
    raise typer.Exit(2 if summary.failed else 0)


if __name__ == "__main__":
    app()
