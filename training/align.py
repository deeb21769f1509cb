"""FER-2013 faces aligned the way the annotation job aligns its crops: YuNet's eye landmarks give each face's roll,
and the face is turned about its centre until the eyes are level (:func:`fer_core.preprocess.crop_faces`).

FER-2013's faces are 48 px, too small for YuNet, so each is upscaled 4x (bicubic) before detection; the roll
does not depend on the scale. Where YuNet finds no face, the face keeps its plain crop (roll NaN). On clean
PublicTest faces it finds about 98%; on blurred, noisy or tiny faces far fewer, and those keep the plain crop too.

The rolls of a data set are computed once (about 2.5 ms a face on one core) and cached under the package's cache
folder, keyed by the data file and the detector, so a training run that aligns its faces starts in seconds on the
second run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from fer_core.preprocess import crop_faces

UPSCALE = 4
SCORE_THRESHOLD = 0.6
"""Lower than the job's default: an upscaled 48 px face scores lower than a face in a frame."""


def face_rolls(faces: np.ndarray, detector=None) -> np.ndarray:
    """Roll in degrees (:func:`fer_core.measures.roll_from_eyes`) of each uint8 (N, S, S) face, from the most
    confident YuNet detection on the face upscaled 4x; NaN where none is found."""
    import cv2

    from fer_core.detect import create_detector
    from fer_core.measures import roll_from_eyes

    if detector is None:
        detector = create_detector("yunet", None, min_face_px=10, score_threshold=SCORE_THRESHOLD)
    out = np.full(len(faces), np.nan, dtype=np.float32)
    for i, face in enumerate(faces):
        side = face.shape[0] * UPSCALE
        big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        found = detector.detect(np.repeat(big[..., None], 3, axis=2) if big.ndim == 2 else big)
        if len(found):
            out[i] = roll_from_eyes(found.landmarks[:1])[0]
    return out


def align_faces(faces: np.ndarray, rolls: np.ndarray) -> np.ndarray:
    """Each uint8 (N, S, S) face turned about its centre by its roll (eyes level); NaN rolls keep the face."""
    faces = np.asarray(faces)
    out = faces.copy()
    side = faces.shape[1]
    box = np.array([[0, 0, side, side]], dtype=np.float32)
    for i in np.flatnonzero(np.isfinite(rolls)):
        out[i] = crop_faces(faces[i], box, margin=0.0, out_size=side, roll_deg=rolls[i : i + 1])[0]
    return out


def cached_rolls(faces: np.ndarray) -> np.ndarray:
    """:func:`face_rolls` of ``faces``, cached by the digests of their bytes and of the detector model."""
    from fer_core.detect import cache_dir, resolve_yunet_model

    model = Path(resolve_yunet_model(None))
    key = hashlib.sha256(np.ascontiguousarray(faces).tobytes()).hexdigest()[:16]
    key += "-" + hashlib.sha256(model.read_bytes()).hexdigest()[:8]
    path = cache_dir() / "align" / f"rolls-{key}.npy"
    if path.is_file():
        rolls = np.load(path)
        if rolls.shape == (len(faces),):
            return rolls
    rolls = face_rolls(faces)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part.npy")
    np.save(tmp, rolls)
    tmp.replace(path)
    return rolls


def as_served(faces: np.ndarray, spec) -> np.ndarray:
    """FER-2013 faces as a checkpoint with preprocessing ``spec`` sees them in the job: aligned where its record
    says ``align``, else unchanged."""
    if not getattr(spec, "align", False):
        return faces
    return align_faces(faces, cached_rolls(faces))
