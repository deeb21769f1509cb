"""How FER-2013 frames its faces, measured with the job's own detector, to set the crop margin the annotation job
uses: YuNet runs on Training faces (upscaled 4x) and the image side is compared with the detected box.

    python benchmarks/fer_framing.py --data ../shared/data/fer2013 --faces 600

crop_margin = (image side / max(box w, h) - 1) / 2, median over the faces. Training split only: no test labels
are involved.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

app = typer.Typer(add_completion=False)


@app.command()
def main(
    data: str = typer.Option("../shared/data/fer2013", help="FER-2013 location."),
    faces: int = typer.Option(600, help="Training faces to measure."),
    detector_model: str = typer.Option(None, help="YuNet ONNX (default: resolved as the job does)."),
) -> None:
    import cv2

    from fer_core.detect import create_detector
    from training.data import load_fer

    detector = create_detector("yunet", detector_model, min_face_px=10, score_threshold=0.6)
    train = load_fer(data, splits=["Training"]).subset(faces, seed=0)
    side = 192
    ratios, centres = [], []
    for face in train.pixels:
        image = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        found = detector.detect(np.repeat(image[..., None], 3, axis=2))
        if len(found):
            x, y, w, h = found.boxes[0]
            ratios.append(side / max(w, h))
            centres.append(((x + w / 2) / side, (y + h / 2) / side))
    r = np.array(ratios)
    c = np.median(np.array(centres), axis=0)
    print(f"faces detected: {len(r)}/{len(train)}")
    print(f"image side / box side: median {np.median(r):.3f} (IQR {np.percentile(r, 25):.3f}-{np.percentile(r, 75):.3f})")
    print(f"box centre (share of the side): x {c[0]:.3f}, y {c[1]:.3f}")
    print(f"implied crop_margin: {(np.median(r) - 1) / 2:.3f}")


if __name__ == "__main__":
    app()
