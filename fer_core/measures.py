"""What the faces table records about each face beside its emotion: the detector's 5 landmarks, a head pose
estimated from them, and image-quality measures. Pure numpy + OpenCV, no Ray, no torch.

Conventions (image coordinates: x to the right, y down, in pixels of the original upright frame):

- ``roll_deg``: the angle of the eye line, from the subject's right eye to their left eye (on screen: left eye
  to right eye). 0 for level eyes; **positive when the head tilts clockwise on screen** (towards the subject's
  left shoulder). Turning every frame of a clip by 20 degrees moved the median by 18.7 degrees (the Pexels clip) and
  23.3 (``posed_neutral.mp4``, 3 s at 10 fps, detection at 640 px); ``../shared/docs/ENVIRONMENT.md`` saw 15.4 at
  full resolution (``tests/test_measures.py`` checks 15-25).
- ``yaw_deg``, ``pitch_deg``: the direction the face points, from ``cv2.solvePnP`` (SQPnP) of the 5 landmarks
  against a generic adult face (`FACE_MODEL_MM`) seen by a pinhole camera with focal length = the frame's longest
  side and its centre as principal point. 0/0 = the face looks straight into the camera. **Yaw is positive when
  the nose points to the image's right** (the subject turns to their left), **pitch is positive when the face looks
  up**. Given mirrored landmarks, the estimate flips the sign of yaw and roll and keeps pitch (the face model is
  symmetric). YuNet's landmarks themselves are not quite mirror-symmetric: on 3 s of ``posed_neutral.mp4`` the
  median roll reads -6.1 degrees upright and +0.5 mirrored, while the Pexels speaker's yaw reads -16.3 and +16.7.
- Expected error: 5 points and one generic face for everybody. Published 5-landmark estimates of this kind are
  typically off by 5-10 degrees in yaw and more in pitch (faces differ in depth and the true focal length is
  unknown), growing past about 45 degrees of yaw, where YuNet's far-side landmarks become guesses. Use them to
  tell frontal from turned faces and to follow changes along a track, not as measurements of a head.
- ``sharpness``: the variance of the Laplacian of the face box in grey, resized to 64x64 px first so that faces of
  every size are compared at one scale (higher = sharper; motion blur and defocus lower it).
- ``brightness``: the mean grey level (0-255) of the face box.
- ``in_frame``: the share (0-1) of the detector's box that lies inside the frame (a face cut by the frame edge
  has less than 1).
- ``iod_px``: inter-ocular distance, the distance between the two eye landmarks, in frame pixels (AFFDEX's
  measure of face size).

Landmark-based values (landmarks, pose, ``iod_px``) are NaN (null in Parquet) where the detector gives no
landmarks, as with the Haar cascade.
"""

from __future__ import annotations

import math

import numpy as np

from fer_core.detect import Detections

LANDMARK_NAMES: tuple[str, ...] = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")
"""YuNet's 5 points in its order; "right" is the subject's right (on screen, the left one of a frontal face)."""

LANDMARK_COLUMNS: tuple[str, ...] = tuple(f"lm_{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy")
POSE_COLUMNS: tuple[str, ...] = ("roll_deg", "yaw_deg", "pitch_deg")
QUALITY_COLUMNS: tuple[str, ...] = ("sharpness", "brightness", "in_frame", "iod_px")
MEASURE_COLUMNS: tuple[str, ...] = LANDMARK_COLUMNS + POSE_COLUMNS + QUALITY_COLUMNS
"""The float32 columns of the faces table that :func:`measure_faces` fills, in schema order."""

SHARPNESS_SIDE = 64
"""Side in pixels of the grey square the face box is resized to before the Laplacian."""

FACE_MODEL_MM = np.array(
    [
        [-32.0, -35.0, 0.0],  # right eye (subject's right: negative x when facing the camera)
        [32.0, -35.0, 0.0],  # left eye
        [0.0, 0.0, -30.0],  # nose tip, 30 mm in front of the eyes
        [-24.0, 30.0, -10.0],  # right mouth corner
        [24.0, 30.0, -10.0],  # left mouth corner
    ],
    dtype=np.float64,
)
"""A generic adult face in millimetres, camera axes (x right, y down, z away from the camera), eyes at z = 0:
inter-ocular distance 64 mm, mouth 48 mm wide, rounded from anthropometric averages."""


def roll_from_eyes(landmarks: np.ndarray) -> np.ndarray:
    """Roll in degrees of ``(N, 5, 2)`` landmarks (see the module's conventions); NaN where they are NaN."""
    d = landmarks[:, 1] - landmarks[:, 0]
    return np.degrees(np.arctan2(d[:, 1], d[:, 0])).astype(np.float32)


def head_pose(landmarks: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Yaw and pitch in degrees of ``(N, 5, 2)`` landmarks in a ``width`` x ``height`` frame.

    Returns:
        ``(yaw_deg, pitch_deg)``, each ``(N,)`` float32; NaN for faces without landmarks or where no pose in
        front of the camera fits them.
    """
    import cv2

    n = len(landmarks)
    yaw = np.full(n, np.nan, np.float32)
    pitch = np.full(n, np.nan, np.float32)
    focal = float(max(width, height))
    camera = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    for i in range(n):
        points = landmarks[i].astype(np.float64)
        # Points that coincide (or nearly: under a pixel apart) carry no pose; SQPnP asserts on them.
        if not np.isfinite(points).all() or points.std(axis=0).sum() < 1.0:
            continue
        try:
            ok, rvec, tvec = cv2.solvePnP(FACE_MODEL_MM, points, camera, None, flags=cv2.SOLVEPNP_SQPNP)
        except cv2.error:
            continue
        if not ok or float(tvec[2, 0]) <= 0:
            continue
        rotation, _ = cv2.Rodrigues(rvec)
        nose_dir = rotation @ np.array([0.0, 0.0, -1.0])  # where the face points, in camera axes
        yaw[i] = math.degrees(math.atan2(nose_dir[0], -nose_dir[2]))
        pitch[i] = math.degrees(math.atan2(-nose_dir[1], math.hypot(nose_dir[0], nose_dir[2])))
    return yaw, pitch


def face_sharpness(gray_face: np.ndarray) -> float:
    """The ``sharpness`` of a grey face image (the face box cut from the frame): the variance of the Laplacian
    after resizing it to `SHARPNESS_SIDE` pixels square."""
    import cv2

    square = cv2.resize(gray_face, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(square, cv2.CV_64F).var())


def _quality(gray: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(boxes)
    sharpness = np.full(n, np.nan, np.float32)
    brightness = np.full(n, np.nan, np.float32)
    height, width = gray.shape[:2]
    for i, (x, y, w, h) in enumerate(boxes):
        x0, y0 = max(0, int(math.floor(x))), max(0, int(math.floor(y)))
        x1, y1 = min(width, int(math.ceil(x + w))), min(height, int(math.ceil(y + h)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        region = gray[y0:y1, x0:x1]
        sharpness[i] = face_sharpness(region)
        brightness[i] = float(region.mean())
    return sharpness, brightness


def measure_faces(image_rgb: np.ndarray, detections: Detections) -> dict[str, np.ndarray]:
    """The per-face measures of detections in an RGB ``uint8`` image (or a 2-D grey one), in its pixels.

    Returns:
        One ``(N,)`` float32 array per name of `MEASURE_COLUMNS`, rows aligned with `detections`.
    """
    import cv2

    image = np.asarray(image_rgb)
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    height, width = gray.shape[:2]
    landmarks = detections.landmarks
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(LANDMARK_NAMES):
        out[f"lm_{name}_x"] = landmarks[:, j, 0].astype(np.float32)
        out[f"lm_{name}_y"] = landmarks[:, j, 1].astype(np.float32)
    out["roll_deg"] = roll_from_eyes(landmarks)
    out["yaw_deg"], out["pitch_deg"] = head_pose(landmarks, width, height)
    out["sharpness"], out["brightness"] = _quality(gray, detections.boxes)
    out["in_frame"] = detections.in_frame.astype(np.float32)
    out["iod_px"] = np.hypot(*(landmarks[:, 1] - landmarks[:, 0]).T).astype(np.float32)
    return {name: out[name] for name in MEASURE_COLUMNS}
