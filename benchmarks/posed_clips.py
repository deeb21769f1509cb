"""The whole pipeline on the seven posed clips (one per class): each clip's label is the argmax of the mean
class probabilities over its face rows.

    python benchmarks/posed_clips.py --videos ../shared/data/videos [--model DIR] [--fps 5]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

app = typer.Typer(add_completion=False)


def posed_clip_labels(videos: Path, out: str, *, model: str | None, fps: float, detector_model: str | None) -> list[dict]:
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
    annotate([str(c) for c in clips], out, AnnotateOptions(fps=fps, model=model), detector=detector, model_bytes=None)
    import pandas as pd

    faces = pd.read_parquet(Path(out) / "faces").dropna(subset=["emotion"])
    records = []
    for clip in clips:
        rows = faces[faces.video_path == str(clip)]
        mean = rows[list(PROB_COLUMNS)].mean()
        predicted = EMOTIONS[int(mean.to_numpy().argmax())] if len(rows) else None
        records.append({"clip": clip.name, "label": clip.stem.split("_", 1)[1], "predicted": predicted,
                        "faces": len(rows), **{c: round(float(mean[c]), 3) for c in PROB_COLUMNS}})
    return records


@app.command()
def main(
    videos: Path = typer.Option(Path("../shared/data/videos"), help="Folder with posed_<emotion>.mp4 clips."),
    model: str = typer.Option(None, help="Classifier checkpoint (default: the shipped model)."),
    fps: float = typer.Option(5.0, help="Sampling rate."),
    detector_model: str = typer.Option(None, help="YuNet ONNX (default: resolved as the job does)."),
    json_out: Path = typer.Option(None, help="Also write the records as JSON here."),
) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as out:
        records = posed_clip_labels(videos, out, model=model, fps=fps, detector_model=detector_model)
    hits = sum(r["predicted"] == r["label"] for r in records)
    for r in records:
        mark = "ok " if r["predicted"] == r["label"] else "MISS"
        print(f"{mark} {r['clip']:<22} label {r['label']:<9} predicted {str(r['predicted']):<9} ({r['faces']} faces)")
    print(f"posed clips labelled correctly: {hits}/{len(records)}")
    if json_out:
        json_out.write_text(json.dumps({"hits": hits, "clips": records}, indent=2))


if __name__ == "__main__":
    app()
