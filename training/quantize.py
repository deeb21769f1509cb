"""Calibrate a checkpoint for int8 CPU inference (``--precision int8``) and check it on PublicTest.

    python training/quantize.py fer_core/weights/default --data ../shared/data/fer2013

Measures the activation ranges on Training faces (1,024 by default, a fixed seeded sample, as the eval preset
prepares them), builds the int8 model from them, and compares its PublicTest accuracy with fp32's, both through
``predict_proba`` with the checkpoint's own test-time augmentation. The record (scheme, ranges, both accuracies) is
written into the checkpoint's ``fer_checkpoint.json`` only if int8 stays within ``--max-drop`` points (0.3); the
weights are not touched, so the model's id stays the same. PrivateTest is never read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    model_dir: Path = typer.Argument(..., help="Checkpoint folder (fer_checkpoint.json + model.safetensors)."),
    data: str = typer.Option("../shared/data/fer2013", "--data", help="FER-2013 location."),
    faces: int = typer.Option(1024, help="Training faces to measure the activation ranges on."),
    max_drop: float = typer.Option(0.3, help="Largest PublicTest accuracy loss (points) that int8 may cost."),
) -> None:
    """Calibrate, check on PublicTest, and record the int8 calibration in the checkpoint."""
    import numpy as np

    from fer_core.checkpoint import META_FILE, CheckpointError, Classifier, load_checkpoint
    from fer_core.preprocess import EvalPreset
    from fer_core.quantize import SCHEME, calibrate
    from training.data import DataError, load_fer

    try:
        model, meta, model_id = load_checkpoint(model_dir)
        fer = load_fer(data, splits=["Training", "PublicTest"])
    except (CheckpointError, DataError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    sample = fer.split("Training").subset(faces, seed=0)
    ranges = calibrate(model, EvalPreset(meta.preprocessing)(sample.pixels))
    public = fer.split("PublicTest")
    meta.quantization = {"scheme": SCHEME, "activation_ranges": ranges, "calibration_faces": len(sample)}
    accuracy = {}
    for precision in ("fp32", "int8"):
        clf = Classifier(load_checkpoint(model_dir)[0], meta, model_id, device="cpu", precision=precision)
        accuracy[precision] = float(np.mean(clf.predict_proba(public.pixels).argmax(1) == public.labels))
    drop = 100 * (accuracy["fp32"] - accuracy["int8"])
    typer.echo(f"PublicTest: fp32 {accuracy['fp32']:.4f}, int8 {accuracy['int8']:.4f} ({-drop:+.2f} points), "
               f"tta {meta.tta}, {len(ranges)} activation ranges from {len(sample)} Training faces")
    if drop > max_drop:
        typer.echo(f"error: int8 costs {drop:.2f} points of PublicTest accuracy, more than --max-drop {max_drop}; "
                   "nothing written", err=True)
        raise typer.Exit(1)
    meta.quantization.update({"public_accuracy_fp32": accuracy["fp32"], "public_accuracy_int8": accuracy["int8"]})
    path = model_dir / META_FILE
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(meta.to_json())
    tmp.replace(path)
    typer.echo(f"int8 calibration recorded in {path}")


if __name__ == "__main__":
    app()
