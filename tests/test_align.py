"""Crops aligned by the eyes: the turned crop in fer_core.preprocess, its use in serving where a checkpoint asks for
it, and FER-2013 faces aligned the same way for training (training/align.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_core.measures import roll_from_eyes
from fer_core.preprocess import Preprocessing, crop_faces, face_crops

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def detector(yunet_model):
    from fer_core.detect import create_detector

    return create_detector("yunet", str(yunet_model))


@pytest.fixture(scope="module")
def frame(videos_dir) -> np.ndarray:
    from fer_core.video import iter_frames

    return next(iter(iter_frames(str(videos_dir / "posed_neutral.mp4"), sample_fps=1))).image


def tilt(image: np.ndarray, degrees: float) -> np.ndarray:
    """The frame turned clockwise on screen by ``degrees`` (the head's roll grows by about that much)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), -degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def roll_in_crop(detector, crop: np.ndarray) -> float:
    big = cv2.copyMakeBorder(cv2.resize(crop, (480, 480)), 120, 120, 120, 120, cv2.BORDER_REPLICATE)
    found = detector.detect(big)
    assert len(found), "no face found in the crop"
    return float(roll_from_eyes(found.landmarks[:1])[0])


def test_zero_and_nan_roll_give_the_upright_crop(frame, detector) -> None:
    dets = detector.detect(frame)
    plain = crop_faces(frame, dets.boxes, margin=0.01, out_size=48)
    assert np.array_equal(crop_faces(frame, dets.boxes, margin=0.01, out_size=48, roll_deg=np.full(len(dets), np.nan)), plain)
    zero = crop_faces(frame, dets.boxes, margin=0.01, out_size=48, roll_deg=np.zeros(len(dets)))
    # Same square, resampled by the warp instead of the resize: within a grey level on average.
    assert np.abs(zero.astype(int) - plain.astype(int)).mean() < 1.5
    with pytest.raises(ValueError, match="roll_deg has 2 values for 1 boxes"):
        crop_faces(frame, dets.boxes[:1], margin=0.01, out_size=48, roll_deg=np.zeros(2))


def test_a_tilted_face_comes_out_level(frame, detector) -> None:
    tilted = tilt(frame, 20)
    dets = detector.detect(tilted)
    before = float(roll_from_eyes(dets.landmarks[:1])[0])
    assert before > 10, before  # clockwise tilt reads as positive roll
    upright = crop_faces(tilted, dets.boxes[:1], margin=0.3, out_size=160)
    aligned = crop_faces(tilted, dets.boxes[:1], margin=0.3, out_size=160, roll_deg=roll_from_eyes(dets.landmarks[:1]))
    assert abs(roll_in_crop(detector, aligned[0])) < abs(roll_in_crop(detector, upright[0])) - 8


def test_face_crops_aligns_only_where_the_checkpoint_asks(frame, detector) -> None:
    tilted = tilt(frame, 20)
    dets = detector.detect(tilted)
    plain = crop_faces(tilted, dets.boxes, margin=0.01, out_size=48)
    assert np.array_equal(face_crops(tilted, dets.boxes, dets.landmarks, Preprocessing()), plain)
    aligned = face_crops(tilted, dets.boxes, dets.landmarks, Preprocessing(align=True))
    assert aligned.shape == plain.shape and not np.array_equal(aligned, plain)
    # Without landmarks (Haar) the crop stays upright even for an aligned checkpoint.
    nan = np.full_like(dets.landmarks, np.nan)
    assert np.array_equal(face_crops(tilted, dets.boxes, nan, Preprocessing(align=True)), plain)


def test_large_faces_are_reduced_before_the_turn(frame, detector) -> None:
    dets = detector.detect(frame)
    big = cv2.resize(frame, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    boxes = dets.boxes[:1] * 4
    plain = crop_faces(big, boxes, margin=0.01, out_size=48)
    zero = crop_faces(big, boxes, margin=0.01, out_size=48, roll_deg=np.zeros(1))
    assert np.abs(zero.astype(int) - plain.astype(int)).mean() < 2.0


def test_older_checkpoints_read_align_false_and_the_record_round_trips(tmp_path: Path) -> None:
    from fer_core.checkpoint import default_model_dir, load_checkpoint

    meta = json.loads((default_model_dir() / "fer_checkpoint.json").read_text())
    legacy = dict(meta["preprocessing"])
    legacy.pop("align", None)
    assert Preprocessing.from_dict(legacy).align is False
    assert Preprocessing.from_dict(Preprocessing(align=True).to_dict()).align is True
    folder = tmp_path / "aligned"
    shutil.copytree(default_model_dir(), folder)
    meta["preprocessing"]["align"] = True
    (folder / "fer_checkpoint.json").write_text(json.dumps(meta))
    assert load_checkpoint(folder)[1].preprocessing.align is True


def test_fer_faces_are_levelled_and_faces_without_a_detection_keep_their_crop(fer_data_dir) -> None:
    import torch

    from fer_core.corrupt import corrupt, seeded_rand
    from training.align import align_faces, face_rolls

    with np.load(fer_data_dir / "fer2013_test.npz") as d:
        faces = d["pixels"][:60]
    x = torch.from_numpy(faces).float()[:, None] / 255
    rolled = (corrupt(x, "roll", 25.0, seeded_rand(0))[:, 0] * 255).round().to(torch.uint8).numpy()
    before = face_rolls(rolled)
    after = face_rolls(align_faces(rolled, before))
    both = np.isfinite(before) & np.isfinite(after)
    assert both.mean() > 0.7
    assert np.median(np.abs(after[both])) < np.median(np.abs(before[both])) - 5
    flat = np.full((2, 48, 48), 128, np.uint8)  # no face to find
    assert np.isnan(face_rolls(flat)).all()
    assert np.array_equal(align_faces(flat, face_rolls(flat)), flat)


def test_the_job_serves_an_aligned_checkpoint(frame, detector, tmp_path: Path) -> None:
    """The live path (the same face_crops as the job's segments) classifies aligned crops for an aligned checkpoint."""
    from fer_core.checkpoint import default_model_dir, load_classifier
    from fer_core.live import FrameAnnotator

    folder = tmp_path / "aligned"
    shutil.copytree(default_model_dir(), folder)
    meta = json.loads((folder / "fer_checkpoint.json").read_text())
    meta["preprocessing"]["align"] = True
    (folder / "fer_checkpoint.json").write_text(json.dumps(meta))
    tilted = tilt(frame, 20)
    rows = {}
    for name, source in (("plain", None), ("aligned", folder)):
        annotator = FrameAnnotator(detector, load_classifier(source, device="cpu", precision="fp32"), video_id="v", video_path="v")
        rows[name] = annotator.annotate(tilted, 0, 0.0)
    assert len(rows["plain"]) == len(rows["aligned"]) == 1
    assert rows["plain"][0]["x"] == rows["aligned"][0]["x"]
    assert rows["plain"][0]["p_neutral"] != rows["aligned"][0]["p_neutral"]
