"""Tests for fer_core.track: IoU matrix, the greedy IoU tracker and per-video track assignment."""

from __future__ import annotations

import numpy as np
import pytest

from fer_core.track import IoUTracker, assign_tracks, iou_matrix


def _box(x: float, y: float, size: float = 100.0) -> list[float]:
    return [x, y, size, size]


def test_iou_matrix_values() -> None:
    a = np.array([_box(0, 0), _box(50, 0)])
    b = np.array([_box(0, 0), _box(200, 200), [10, 10, 0, 0]])
    ious = iou_matrix(a, b)
    assert ious.shape == (2, 3)
    np.testing.assert_allclose(ious[:, 0], [1.0, 50 * 100 / (2 * 100 * 100 - 50 * 100)])
    np.testing.assert_array_equal(ious[:, 1:], 0.0)  # disjoint, and a zero-area box
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)


def test_slowly_moving_face_keeps_its_id() -> None:
    tracker = IoUTracker()
    ids = [tracker.update(np.array([_box(10 * i, 5 * i)]), i * 0.2)[0] for i in range(30)]
    assert ids == [0] * 30


def test_two_faces_keep_distinct_ids_whatever_their_order() -> None:
    tracker = IoUTracker()
    left, right = _box(0, 0), _box(300, 0)
    first = tracker.update(np.array([left, right]), 0.0)
    assert first.tolist() == [0, 1] and first.dtype == np.int32
    for step in range(1, 10):
        moved_left, moved_right = _box(5 * step, 0), _box(300 - 5 * step, 0)
        boxes = [moved_right, moved_left] if step % 2 else [moved_left, moved_right]
        expected = [1, 0] if step % 2 else [0, 1]
        assert tracker.update(np.array(boxes), step * 0.2).tolist() == expected


def test_fast_face_keeps_its_id_where_the_iou_falls_short() -> None:
    # Boxes of simplefr_Video_2.mp4 at --fps 5 (frames 15 and 20): a face moving 40 px down between sampled
    # frames, IoU 0.2998 with its last box.
    last, now = np.array([[817, 0, 66, 92]]), np.array([[800, 37, 66, 85]])
    assert iou_matrix(now, last)[0, 0] < 0.3
    tracker = IoUTracker()
    tracker.update(last, 0.63)
    assert tracker.update(now, 0.83).tolist() == [0]
    iou_only = IoUTracker(max_shift=0.0)
    iou_only.update(last, 0.63)
    assert iou_only.update(now, 0.83).tolist() == [1]


def test_the_shift_pass_takes_only_what_iou_left_and_only_faces_of_about_the_same_size() -> None:
    tracker = IoUTracker()
    tracker.update(np.array([_box(0, 0), _box(300, 0)]), 0.0)
    # Box 0 continues track 0 by IoU (0.67). Box 1 is 47 px (0.47 sides) from track 1 at IoU 0.29: the shift pass
    # gives it track 1. Box 2 overlaps track 0 too (IoU 0.54) but box 0 took it: a track of its own.
    boxes = np.array([_box(20, 0), _box(333, 33), _box(0, 30)])
    assert iou_matrix(boxes[1:2], np.array([_box(300, 0)]))[0, 0] < 0.3
    assert tracker.update(boxes, 0.2).tolist() == [0, 1, 2]
    # The same centre at twice the size (IoU 0.25): another face, nearer the camera.
    centred = IoUTracker()
    centred.update(np.array([_box(0, 0)]), 0.0)
    assert centred.update(np.array([_box(-50, -50, 200)]), 0.2).tolist() == [1]
    # Just within max_shift (0.5 of the box's side) and just beyond it.
    for offset, expected in ((33, 0), (40, 1)):
        near = IoUTracker()
        near.update(np.array([_box(0, 0)]), 0.0)
        assert near.update(np.array([_box(offset, offset)]), 0.2).tolist() == [expected]


def test_a_track_unseen_longer_reaches_farther() -> None:
    # Boxes of facenet_pytorch_crowd.mp4 at every frame: a face walking through the crowd that the full detector found
    # on 4 of the 21 frames after 3.2 s; the schedule saw it at 3.2 s and next at 4.0 s, 0.62 box sides away.
    last, now = np.array([[450, 615, 96, 120]]), np.array([[377, 548, 110, 140]])
    tracker = IoUTracker()
    tracker.update(last, 3.2)
    assert tracker.update(now, 4.0).tolist() == [0]
    # The same shift 0.2 s later is too far (the reach is max_shift up to REACH_AFTER_S), and so is twice the
    # shift 0.8 s later (the reach grows by max_shift a second beyond it: 0.8 sides then).
    soon = IoUTracker()
    soon.update(last, 3.2)
    assert soon.update(now, 3.4).tolist() == [1]
    far = IoUTracker()
    far.update(last, 3.2)
    assert far.update(now + np.array([[-73, -67, 0, 0]]), 4.0).tolist() == [1]


def test_face_gone_longer_than_max_age_gets_a_new_id() -> None:
    tracker = IoUTracker(max_age_s=1.0)
    face = np.array([_box(0, 0)])
    assert tracker.update(face, 0.0).tolist() == [0]
    assert tracker.update(np.zeros((0, 4)), 0.5).tolist() == []
    assert tracker.update(face, 1.0).tolist() == [0]  # gone for exactly max_age_s: same track
    assert tracker.update(face, 2.5).tolist() == [1]  # gone for 1.5 s: a new track


def test_greedy_matching_prefers_the_highest_iou() -> None:
    tracker = IoUTracker(iou_threshold=0.1)
    tracker.update(np.array([_box(0, 0), _box(60, 0)]), 0.0)
    # The new box overlaps track 1 more than track 0; the second box then takes track 0.
    ids = tracker.update(np.array([_box(55, 0), _box(5, 0)]), 0.2)
    assert ids.tolist() == [1, 0]
    assert tracker.update(np.array([_box(1000, 1000)]), 0.4).tolist() == [2]


def test_time_must_not_go_backwards() -> None:
    tracker = IoUTracker()
    tracker.update(np.array([_box(0, 0)]), 1.0)
    with pytest.raises(ValueError, match="time order"):
        tracker.update(np.array([_box(0, 0)]), 0.5)
    tracker.reset()
    assert tracker.update(np.array([_box(500, 500)]), 0.0).tolist() == [0]


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="iou_threshold"):
        IoUTracker(iou_threshold=0.0)
    with pytest.raises(ValueError, match="max_age_s"):
        IoUTracker(max_age_s=-1.0)
    with pytest.raises(ValueError, match="max_shift"):
        IoUTracker(max_shift=1.0)


def test_assign_tracks_orders_by_time_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(20):
        boxes = np.array([_box(3 * i, 0), _box(400 - 3 * i, 200)]) + rng.normal(0, 1, (2, 4))
        frames.append((i * 0.2, boxes))
    in_order = assign_tracks(frames)
    assert [ids.tolist() for ids in in_order] == [[0, 1]] * 20
    shuffled_order = rng.permutation(len(frames))
    shuffled = assign_tracks([frames[i] for i in shuffled_order])
    for position, i in enumerate(shuffled_order):
        np.testing.assert_array_equal(shuffled[position], in_order[i])
    assert [ids.tolist() for ids in assign_tracks(frames)] == [ids.tolist() for ids in in_order]
    assert assign_tracks([]) == []
