"""Tests for the tracking-driven detection schedule (fer_core.schedule) with the real YuNet detector, on frames
made of a real face pasted onto a background, so each case controls where and when the face is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fer_core.detect import create_detector
from fer_core.schedule import AUTO_INTERVAL_S, ScheduledDetector, detect_every_for, schedule_description
from fer_core.track import iou_matrix

WIDTH, HEIGHT = 640, 360


@pytest.fixture(scope="module")
def detector():
    return create_detector("auto")


@pytest.fixture(scope="module")
def face(videos_dir: Path, detector) -> np.ndarray:
    """A real face with some margin around it, about 150 px tall, from a posed clip."""
    from fer_core.video import iter_frames

    image = next(iter_frames(str(videos_dir / "posed_neutral.mp4"), sample_fps=1, start_s=1.0)).image
    x, y, w, h = detector.detect(image).boxes[0]
    side = 1.6 * max(w, h)
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    crop = image[y0 : y0 + int(side), x0 : x0 + int(side)]
    import cv2

    return cv2.resize(crop, (150, 150), interpolation=cv2.INTER_AREA)


def _background(seed: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (HEIGHT // 40, WIDTH // 40, 3), dtype=np.uint8)
    return cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)


def _frame(face: np.ndarray | None, x: int = 0, y: int = 100, seed: int = 0) -> np.ndarray:
    image = _background(seed)
    if face is not None:
        image[y : y + face.shape[0], x : x + face.shape[1]] = face
    return image


def _centre_x(found) -> float:
    return float(found.boxes[0, 0] + found.boxes[0, 2] / 2)


def test_every_1_is_the_plain_detector(detector, face) -> None:
    frames = [_frame(face, 100 + 5 * i) for i in range(6)]
    scheduled = ScheduledDetector(detector, 1)
    for image in frames:
        got, want = scheduled.detect(image), detector.detect(image)
        np.testing.assert_array_equal(got.boxes, want.boxes)
        np.testing.assert_array_equal(got.scores, want.scores)
    assert scheduled.stats.full == 6 and scheduled.stats.windows == 0


def test_windows_follow_a_moving_face_with_full_detection_boxes(detector, face) -> None:
    scheduled = ScheduledDetector(detector, 8)
    for i in range(16):
        image = _frame(face, 100 + 6 * i)
        got, want = scheduled.detect(image), detector.detect(image)
        assert len(got) == 1 and len(want) == 1
        assert iou_matrix(got.boxes, want.boxes)[0, 0] >= 0.8
        assert abs(float(got.scores[0]) - float(want.scores[0])) < 0.1
        assert np.isfinite(got.landmarks).all()
    assert scheduled.stats.windows >= 8  # most frames were window searches, not full detections
    assert scheduled.stats.full <= 5


@pytest.mark.parametrize("every", [2, 4, 8])
def test_a_face_that_enters_is_found_within_k_frames(detector, face, every: int) -> None:
    scheduled = ScheduledDetector(detector, every)
    enters = 11
    found_at = None
    for i in range(enters + every + 2):
        found = scheduled.detect(_frame(face if i >= enters else None, 300))
        if len(found) and found_at is None:
            found_at = i
    assert found_at is not None and enters <= found_at <= enters + every, found_at


def test_a_scene_cut_triggers_a_full_detection(detector, face) -> None:
    scheduled = ScheduledDetector(detector, 50)
    for _ in range(4):
        assert len(scheduled.detect(_frame(face, 60, seed=0))) == 1
    full_before = scheduled.stats.full
    # The cut: another background, and the face now on the other side of the picture (outside its old window).
    cut = scheduled.detect(_frame(face, 450, seed=7))
    assert scheduled.stats.cuts == 1 and scheduled.stats.full == full_before + 1
    assert scheduled.stats.reasons["scene cut"] == 1
    assert len(cut) == 1 and _centre_x(cut) > 450


def test_a_face_that_leaves_is_dropped_not_kept_as_a_stale_box(detector, face) -> None:
    scheduled = ScheduledDetector(detector, 50, cut_threshold=1000.0)  # no cut detection: the window must notice
    # Full detections at frames 0, 1, 3 and 7 (the interval doubles while nothing new appears), windows between.
    for _ in range(8):
        assert len(scheduled.detect(_frame(face, 100))) == 1
    gone = scheduled.detect(_frame(None))
    assert len(gone) == 0
    assert scheduled.stats.lost == 1 and scheduled.stats.reasons["face lost"] == 1
    # Nothing is followed any more: the next frames stay empty without window searches.
    windows = scheduled.stats.windows
    assert len(scheduled.detect(_frame(None))) == 0 and scheduled.stats.windows == windows


@pytest.mark.parametrize("timed", [True, False])
def test_a_face_a_full_detection_missed_is_searched_again_while_its_track_lives(detector, face, timed: bool) -> None:
    # The case of face_recognition_short_hamilton_clip.mp4 at --fps 5: a full detection misses a face for one frame;
    # the next frame is a window frame, where nothing was followed, so the face stayed unseen until the next full
    # detection. Given frame times, its window is still searched.
    scheduled = ScheduledDetector(detector, 2, cut_threshold=1000.0)
    when = (lambda i: 0.2 * i) if timed else (lambda i: None)
    # Full detections at frames 0 (first), 1 and 3 (the interval, doubled to 2), a window at frame 2.
    for i in range(3):
        assert len(scheduled.detect(_frame(face, 100 + 4 * i), when(i))) == 1
    assert len(scheduled.detect(_frame(None), when(3))) == 0 and scheduled.stats.full == 3
    windows = scheduled.stats.windows
    back = scheduled.detect(_frame(face, 116), when(4))
    assert scheduled.stats.full == 3  # frame 4 is a window frame
    if timed:
        assert len(back) == 1 and abs(_centre_x(back) - (116 + 75)) < 15
        assert scheduled.stats.found_again == 1 and scheduled.stats.windows == windows + 1
    else:  # without frame times a lost face is forgotten at once: found at the next full detection only
        assert len(back) == 0 and scheduled.stats.found_again == 0 and scheduled.stats.windows == windows
    assert len(scheduled.detect(_frame(face, 120), when(5))) == 1 and scheduled.stats.full == 4


def test_a_lost_face_is_searched_for_keep_lost_s_and_never_returned_as_a_stale_box(detector, face) -> None:
    scheduled = ScheduledDetector(detector, 50, cut_threshold=1000.0, keep_lost_s=0.35)
    for i in range(8):
        assert len(scheduled.detect(_frame(face, 100), 0.1 * i)) == 1
    assert len(scheduled.detect(_frame(None), 0.8)) == 0 and scheduled.stats.reasons["face lost"] == 1
    searched = []
    for i in range(9, 14):  # a full detection at 0.9 s (after the lost face, the next frame gets one), then windows
        windows = scheduled.stats.windows
        assert len(scheduled.detect(_frame(None), 0.1 * i)) == 0
        searched.append(scheduled.stats.windows - windows)
    # Last seen at 0.7 s: searched at 1.0 and 1.1 s, not after 1.05 s (0.7 + 0.35).
    assert searched == [0, 1, 0, 0, 0] and scheduled.stats.found_again == 0


def test_a_face_that_jumps_out_of_its_window_is_found_where_it_went(detector, face) -> None:
    scheduled = ScheduledDetector(detector, 50, cut_threshold=1000.0)
    for _ in range(8):
        scheduled.detect(_frame(face, 20))
    jumped = scheduled.detect(_frame(face, 470))
    assert len(jumped) == 1 and _centre_x(jumped) > 470  # the full detection on the same frame found it
    assert scheduled.stats.reasons["face lost"] == 1


def test_two_faces_are_followed_without_duplicates(detector, face) -> None:
    scheduled = ScheduledDetector(detector, 8)
    for i in range(10):
        image = _frame(face, 40 + 3 * i)
        image[100:250, 420 + 2 * i : 570 + 2 * i] = face
        found = scheduled.detect(image)
        assert len(found) == 2, i
        assert iou_matrix(found.boxes[:1], found.boxes[1:])[0, 0] == 0
        assert (np.diff(found.scores) <= 0).all()  # sorted by decreasing score, as a full detection is


def test_options_and_auto_interval() -> None:
    with pytest.raises(ValueError, match="every must be >= 1"):
        ScheduledDetector(create_detector("auto"), 0)
    with pytest.raises(ValueError, match="window must be at least"):
        ScheduledDetector(create_detector("auto"), 4, window=1.0)
    with pytest.raises(ValueError, match="keep_lost_s must be >= 0"):
        ScheduledDetector(create_detector("auto"), 4, keep_lost_s=-1.0)
    assert AUTO_INTERVAL_S == 0.25
    assert detect_every_for(0, 0.0, 30.0) == 8  # every frame of a 30 fps video
    assert detect_every_for(0, 5.0, 30.0) == 2  # --fps 5
    assert detect_every_for(0, 5.0, 2.0) == 1  # a 2 fps video sampled at 5: every frame, 0.5 s apart
    assert detect_every_for(0, 0.0, float("nan")) == 1  # a still image
    assert detect_every_for(3, 5.0, 30.0) == 3
    description = schedule_description(0, 1.0)
    assert description["keep_lost_s"] == 1.0
    assert description["detect_every"] == 0 and description["auto_interval_s"] == AUTO_INTERVAL_S
    assert schedule_description(1, 1.0)["auto_interval_s"] is None
