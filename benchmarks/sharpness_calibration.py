"""Where does a face get too blurred to classify? Calibrates the ``sharpness`` threshold of the analysis helpers'
`UsableRule` on FER-2013 PublicTest faces (the split every choice is made on), blurred at several strengths.

    python benchmarks/sharpness_calibration.py --data ../shared/data/fer2013

Each face is measured exactly as the job measures a face box (`fer_core.measures.face_sharpness`) and classified
by the shipped model in fp32; the table gives accuracy per sharpness band over all blur levels together.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

app = typer.Typer(add_completion=False)

BANDS = (0, 10, 20, 40, 80, 160, 320, float("inf"))


@app.command()
def main(
    data: str = typer.Option("../shared/data/fer2013", help="FER-2013 location."),
    model: Optional[str] = typer.Option(None, help="Classifier checkpoint (default: the shipped one)."),
    sigmas: str = typer.Option("0,0.6,1.2,2.0", help="Gaussian blur sigmas in pixels of the 48 px face."),
) -> None:
    import cv2
    import torch

    from fer_core.checkpoint import load_classifier
    from fer_core.labels import EMOTIONS
    from fer_core.measures import face_sharpness
    from training.data import load_fer

    torch.set_num_threads(1)
    faces = load_fer(data, splits=["PublicTest"])
    classifier = load_classifier(model, precision="fp32")
    order = [classifier.classes.index(name) for name in EMOTIONS]  # FER-2013 labels index EMOTIONS
    sharpness, correct = [], []
    for sigma in (float(s) for s in sigmas.split(",")):
        images = faces.pixels if sigma == 0 else np.stack([cv2.GaussianBlur(x, (0, 0), sigma) for x in faces.pixels])
        s = np.array([face_sharpness(x) for x in images])
        right = classifier.predict_proba(images, batch_size=256)[:, order].argmax(1) == faces.labels
        typer.echo(f"blur sigma {sigma:.1f} px: accuracy {right.mean():.3f}, sharpness median {np.median(s):.0f} "
                   f"(10th-90th percentile {np.percentile(s, 10):.0f}-{np.percentile(s, 90):.0f})")
        sharpness.append(s)
        correct.append(right)
    s, right = np.concatenate(sharpness), np.concatenate(correct)
    typer.echo("sharpness band     faces  accuracy")
    for lo, hi in zip(BANDS[:-1], BANDS[1:]):
        m = (s >= lo) & (s < hi)
        typer.echo(f"[{lo:>4g}, {hi:>4g})  {m.sum():>9}  {right[m].mean() if m.any() else float('nan'):.3f}")


if __name__ == "__main__":
    app()
