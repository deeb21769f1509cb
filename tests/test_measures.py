"""Tests for fer_core.measures (landmarks, head pose, quality) on synthetic geometry, and for the new faces-table
columns through the real annotation job on real clips turned by 20 degrees and mirrored."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from media_support import write_h264

from fer_core.detect import Detections
from fer_core.measures import (
    FACE_MODEL_MM,
    LANDMARK_COLUMNS,
    MEASURE_COLUMNS,
    head_pose,
    measure_faces,
    roll_from_eyes,
)

WIDTH, HEIGHT = 640, 480


def _project(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0, distance_mm: float = 600.0) -> np.ndarray:
    """The generic face turned by the given angles (the module's sign conventions), projected like
    `head_pose` assumes: ``(1, 5, 2)`` landmarks."""
    import cv2

    # Yaw > 0 turns the nose to the image's right (+x); pitch > 0 turns it up (-y); roll > 0 is clockwise on screen.
    yaw, pitch, roll = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(yaw), 0, -math.sin(yaw)], [0, 1, 0], [math.sin(yaw), 0, math.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, math.cos(pitch), math.sin(pitch)], [0, -math.sin(pitch), math.cos(pitch)]])
    rz = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
    rotation = rz @ rx @ ry
    focal = float(max(WIDTH, HEIGHT))
    camera = np.array([[focal, 0, WIDTH / 2], [0, focal, HEIGHT / 2], [0, 0, 1]])
    rvec, _ = cv2.Rodrigues(rotation)
    points, _ = cv2.projectPoints(FACE_MODEL_MM, rvec, np.array([0.0, 0.0, distance_mm]), camera, None)
    return points.reshape(1, 5, 2).astype(np.float32)


def test_projection_helper_follows_the_conventions() -> None:
    frontal = _project()[0]
    assert frontal[0, 0] < frontal[1, 0]  # the subject's right eye is on the image's left
    assert _project(yaw_deg=30)[0, 2, 0] > frontal[2, 0]  # yaw > 0: the nose moves right
    assert _project(pitch_deg=20)[0, 2, 1] < frontal[2, 1]  # pitch > 0: the nose moves up


@pytest.mark.parametrize("angle", [-25.0, 0.0, 10.0, 20.0])
def test_roll_is_the_eye_line_angle(angle: float) -> None:
    assert roll_from_eyes(_project(roll_deg=angle))[0] == pytest.approx(angle, abs=0.5)


@pytest.mark.parametrize(("yaw", "pitch"), [(0.0, 0.0), (25.0, 0.0), (-25.0, 0.0), (0.0, 15.0), (0.0, -15.0), (30.0, 10.0)])
def test_head_pose_recovers_the_generic_face(yaw: float, pitch: float) -> None:
    got_yaw, got_pitch = head_pose(_project(yaw_deg=yaw, pitch_deg=pitch), WIDTH, HEIGHT)
    assert got_yaw[0] == pytest.approx(yaw, abs=1.0)
    # Pitch is the nose direction's elevation: after a yaw, a pitch rotation raises the nose by a little less.
    elevation = math.degrees(math.asin(math.sin(math.radians(pitch)) * math.cos(math.radians(yaw))))
    assert got_pitch[0] == pytest.approx(elevation, abs=1.0)


def test_mirroring_flips_yaw_and_roll_keeps_pitch() -> None:
    landmarks = _project(yaw_deg=20, pitch_deg=10, roll_deg=8)
    mirrored = landmarks.copy()
    mirrored[..., 0] = WIDTH - mirrored[..., 0]
    # A detector labels the points of a mirrored face by where they are: the right eye is still the left one on screen.
    mirrored = mirrored[:, [1, 0, 2, 4, 3]]
    yaw, pitch = head_pose(landmarks, WIDTH, HEIGHT)
    m_yaw, m_pitch = head_pose(mirrored, WIDTH, HEIGHT)
    assert m_yaw[0] == pytest.approx(-yaw[0], abs=0.5) and m_pitch[0] == pytest.approx(pitch[0], abs=0.5)
    assert roll_from_eyes(mirrored)[0] == pytest.approx(-roll_from_eyes(landmarks)[0], abs=0.5)


def _image_with_texture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((HEIGHT, WIDTH, 3), 100, np.uint8)
    image[100:300, 200:400] = rng.integers(0, 256, (200, 200, 1), dtype=np.uint8)
    return image


def test_measures_of_detections() -> None:
    import cv2

    image = _image_with_texture()
    landmarks = np.concatenate([_project(), np.full((1, 5, 2), np.nan, np.float32)])
    boxes = np.array([[200, 100, 200, 200], [600, 400, 80, 160]], np.float32)  # the second sticks out of the frame
    dets = Detections(boxes, np.array([0.9, 0.8]), landmarks).clip(WIDTH, HEIGHT)
    m = measure_faces(image, dets)
    assert list(m) == list(MEASURE_COLUMNS)
    assert all(v.dtype == np.float32 and v.shape == (2,) for v in m.values())
    np.testing.assert_allclose(m["in_frame"], [1.0, (40 * 80) / (80 * 160)], rtol=1e-6)
    assert m["iod_px"][0] == pytest.approx(float(np.hypot(*(landmarks[0, 1] - landmarks[0, 0]))), rel=1e-5)
    assert m["lm_right_eye_x"][0] == pytest.approx(landmarks[0, 0, 0]) and m["lm_mouth_left_y"][0] == pytest.approx(landmarks[0, 4, 1])
    # No landmarks (Haar): landmark-based values are NaN; the box-based quality is still measured.
    for name in (*LANDMARK_COLUMNS, "roll_deg", "yaw_deg", "pitch_deg", "iod_px"):
        assert np.isnan(m[name][1]), name
    assert m["brightness"][1] == pytest.approx(100.0) and m["sharpness"][1] == pytest.approx(0.0)
    # Blur lowers sharpness; brightness is the mean grey level of the box.
    blurred = measure_faces(cv2.GaussianBlur(image, (0, 0), 3.0), dets)
    assert blurred["sharpness"][0] < m["sharpness"][0] / 4
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    assert m["brightness"][0] == pytest.approx(float(gray[100:300, 200:400].mean()), rel=1e-5)
    # A grey image and an empty set of detections work too.
    assert measure_faces(gray, dets)["sharpness"][0] == pytest.approx(m["sharpness"][0], rel=1e-5)
    assert all(len(v) == 0 for v in measure_faces(image, Detections.empty()).values())


def test_degenerate_box_and_unfit_landmarks_are_nan() -> None:
    image = _image_with_texture()
    landmarks = np.zeros((1, 5, 2), np.float32)  # all five points on one pixel: no pose fits in front of the camera
    dets = Detections(np.array([[10, 10, 1, 1]]), np.array([0.9]), landmarks)
    m = measure_faces(image, dets)
    assert np.isnan(m["sharpness"][0]) and np.isnan(m["brightness"][0])
    assert m["iod_px"][0] == 0.0


# --------------------------------------------------------------------------------------------------
# Through the real job


@pytest.fixture(scope="module")
def pose_clips(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Upright, rotated by 20 degrees (clockwise on screen) and mirrored copies of real clips, at 10 fps."""
    import cv2

    from fer_core.video import iter_frames

    folder = tmp_path_factory.mktemp("pose_clips")
    clips = {}
    for name, source in (("neutral", "posed_neutral.mp4"), ("pexels", "pyfeat_WolfgangLanger_Pexels.mp4")):
        frames = [f.image for f in iter_frames(str(videos_dir / source), sample_fps=10, end_s=3.0)]
        height, width = frames[0].shape[:2]
        # cv2's positive angle turns the image counter-clockwise; -20 turns it clockwise on screen.
        turn = cv2.getRotationMatrix2D((width / 2, height / 2), -20.0, 1.0)
        variants = {
            "upright": frames,
            "rotated": [cv2.warpAffine(f, turn, (width, height), borderMode=cv2.BORDER_REFLECT) for f in frames],
            "mirrored": [np.ascontiguousarray(f[:, ::-1]) for f in frames],
        }
        for variant, images in variants.items():
            clips[f"{name}_{variant}"] = write_h264(folder / f"{name}_{variant}.mp4", images)
    return clips


@pytest.fixture(scope="module")
def pose_run(ray_local, pose_clips: dict[str, Path], tiny_checkpoint: Path, tmp_path_factory) -> Path:
    from fer_core.config import AnnotateOptions
    from fer_core.detect import create_detector
    from fer_core.pipeline import annotate
    from fer_core.video import list_inputs

    out = tmp_path_factory.mktemp("pose_run")
    opts = AnnotateOptions(fps=0, segment_s=0, model=str(tiny_checkpoint))
    summary = annotate(list_inputs([str(p) for p in pose_clips.values()]), str(out), opts,
                       detector=create_detector("auto"), model_bytes=None)
    assert not summary.failed, summary.failed
    return out


def _by_clip(out: Path, pose_clips: dict[str, Path]) -> dict[str, pd.DataFrame]:
    faces = pd.read_parquet(out / "faces").dropna(subset=["face_index"])
    by_path = {str(p): name for name, p in pose_clips.items()}
    # The largest face of each frame: the person the clip is about.
    faces = faces.sort_values("w", ascending=False).drop_duplicates(["video_id", "frame_index"])
    return {by_path[path]: rows for path, rows in faces.groupby("video_path")}


@pytest.mark.slow
def test_rotated_clip_reads_about_20_degrees_more_roll(pose_run: Path, pose_clips: dict[str, Path]) -> None:
    clips = _by_clip(pose_run, pose_clips)
    for name in ("neutral", "pexels"):
        upright, rotated = clips[f"{name}_upright"], clips[f"{name}_rotated"]
        assert len(upright) >= 20 and len(rotated) >= 20
        delta = float(rotated.roll_deg.median() - upright.roll_deg.median())
        assert 15.0 <= delta <= 25.0, (name, delta)


@pytest.mark.slow
def test_mirrored_clip_flips_yaw(pose_run: Path, pose_clips: dict[str, Path]) -> None:
    clips = _by_clip(pose_run, pose_clips)
    upright, mirrored = clips["pexels_upright"], clips["pexels_mirrored"]
    # The Pexels speaker looks off to one side (about 10 degrees): the mirrored clip reads the same angle, sign flipped.
    yaw, m_yaw = float(upright.yaw_deg.median()), float(mirrored.yaw_deg.median())
    assert abs(yaw) >= 5.0, yaw
    assert np.sign(m_yaw) == -np.sign(yaw) and abs(m_yaw + yaw) <= 0.3 * abs(yaw) + 2.0, (yaw, m_yaw)
    pitch, m_pitch = float(upright.pitch_deg.median()), float(mirrored.pitch_deg.median())
    # Two thirds of these frames get their landmarks from a window search at about 64 px of face (the schedule's
    # default), where YuNet's points are coarser and not mirror-symmetric: the medians measured 3.2 degrees apart
    # here (on the source frames: 2.8 at 64 px, 0.2-1.2 at 80-160 px, 1.0 with the full detector on every frame).
    assert abs(m_pitch - pitch) <= 4.0, (pitch, m_pitch)


@pytest.mark.slow
def test_new_columns_read_back_with_plain_types(pose_run: Path) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds

    from fer_core.schema import FACES_SCHEMA

    faces = pd.read_parquet(pose_run / "faces")
    for name in MEASURE_COLUMNS:
        assert faces[name].dtype == np.float32, name
    seen = faces.dropna(subset=["face_index"])
    assert seen[list(MEASURE_COLUMNS)].notna().all().all()  # YuNet gives landmarks for every face
    assert faces.loc[faces.face_index.isna(), list(MEASURE_COLUMNS)].isna().all().all()
    assert ((seen.in_frame > 0) & (seen.in_frame <= 1)).all() and (seen.sharpness > 0).all()
    assert seen.brightness.between(0, 255).all() and (seen.iod_px > 0.2 * seen.w).all()
    # The landmarks lie in their face's box (in frame pixels).
    assert seen.lm_nose_x.between(seen.x, seen.x + seen.w).all() and seen.lm_nose_y.between(seen.y, seen.y + seen.h).all()
    # A second engine: pyarrow's dataset API reads the same plain float32 columns, no nested types.
    table = ds.dataset(str(pose_run / "faces"), format="parquet").to_table()
    for name in MEASURE_COLUMNS:
        assert table.schema.field(name).type == pa.float32(), name
    assert not any(pa.types.is_nested(f.type) for f in table.schema)
    assert table.schema.remove_metadata().equals(FACES_SCHEMA.remove_metadata())
    assert table.num_rows == len(faces)
