"""The whole pipeline on the seven posed clips (one per class): each clip's label is the argmax of the mean
class probabilities over its face rows, and its margin is the winner's mean probability less the runner-up's (a
margin of a few thousandths flips with the arithmetic). The job runs once per precision: fp32, and bf16 too where
the CPU has it natively (``--precision`` chooses).

    python benchmarks/posed_clips.py --videos ../shared/data/videos [--model DIR] [--fps 5] [--precision fp32,bf16]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

app = typer.Typer(add_completion=False)


def posed_clip_labels(videos: Path, out: str, *, model: str | None, fps: float, detector_model: str | None,
                      precision: str = "auto") -> list[dict]:
    """Run the job on posed_<emotion>.* clips into ``out`` and return one record per clip."""
    import ray

    from fer_core.config import AnnotateOptions
    from fer_core.detect import create_detector
    from fer_core.labels import EMOTIONS, PROB_COLUMNS
    from fer_core.pipeline import annotate

    clips = sorted(p for p in videos.glob("posed_*") if p.stem.split("_", 1)[1] in EMOTIONS)
    if not clips:
        raise FileNotFoundError(f"no posed_<emotion> clips in {videos}")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
    detector = create_detector("auto", detector_model)
    annotate([str(c) for c in clips], out, AnnotateOptions(fps=fps, model=model, precision=precision), detector=detector,
             model_bytes=None)
    import pandas as pd

    faces = pd.read_parquet(Path(out) / "faces").dropna(subset=["emotion"])
    records = []
    for clip in clips:
        rows = faces[faces.video_path == str(clip)]
        mean = rows[list(PROB_COLUMNS)].mean()
        ranked = np.sort(mean.to_numpy())[::-1]
        predicted = EMOTIONS[int(mean.to_numpy().argmax())] if len(rows) else None
        records.append({"clip": clip.name, "label": clip.stem.split("_", 1)[1], "predicted": predicted,
                        "margin": round(float(ranked[0] - ranked[1]), 4) if len(rows) else None,
                        "faces": len(rows), **{c: round(float(mean[c]), 4) for c in PROB_COLUMNS}})
    return records


@app.command()
def main(
    videos: Path = typer.Option(Path("../shared/data/videos"), help="Folder with posed_<emotion>.mp4 clips."),
    model: str = typer.Option(None, help="Classifier checkpoint (default: the shipped model)."),
    fps: float = typer.Option(5.0, help="Sampling rate."),
    detector_model: str = typer.Option(None, help="YuNet ONNX (default: resolved as the job does)."),
    precision: str = typer.Option(None, help="Comma-separated fp32, bf16, int8 (default: fp32, bf16 where the CPU has it, and int8 where the model carries its calibration)."),
    json_out: Path = typer.Option(None, help="Also write the records as JSON here."),
) -> None:
    from fer_core.checkpoint import cpu_has_native_bf16, load_checkpoint
    from fer_core.quantize import has_calibration

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    calibrated = has_calibration(load_checkpoint(model)[1])
    precisions = precision.split(",") if precision else (
        ["fp32"] + (["bf16"] if cpu_has_native_bf16() else []) + (["int8"] if calibrated else []))
    bad = [p for p in precisions if p not in ("fp32", "bf16", "int8")]
    if bad:
        print(f"error: --precision takes fp32, bf16 and int8, got {', '.join(bad)}", file=sys.stderr)
        raise typer.Exit(1)
    results = {}
    for prec in precisions:
        with tempfile.TemporaryDirectory() as out:
            records = posed_clip_labels(videos, out, model=model, fps=fps, detector_model=detector_model, precision=prec)
        hits = sum(r["predicted"] == r["label"] for r in records)
        print(f"{prec}:")
        for r in records:
            mark = "ok " if r["predicted"] == r["label"] else "MISS"
            print(f"  {mark} {r['clip']:<22} label {r['label']:<9} predicted {str(r['predicted']):<9} "
                  f"margin {r['margin'] if r['margin'] is not None else float('nan'):.3f} ({r['faces']} faces)")
        print(f"  posed clips labelled correctly in {prec}: {hits}/{len(records)}")
        results[prec] = {"hits": hits, "clips": records}
    if json_out:
        json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    app()
