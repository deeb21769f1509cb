"""A small IoU tracker that gives each face a ``track_id`` within one video.

Boxes are ``[x, y, w, h]`` in pixels, as in `fer_core.detect.Detections`. Matching is greedy on IoU (highest
pair first), so results are deterministic: the same boxes in the same order always get the same ids.

Videos may be decoded in segments in parallel; tracking is sequential, so run it per video on the gathered
boxes with `assign_tracks`, which orders frames by timestamp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in `a` with every box in `b`.

    Args:
        a: ``(N, 4)`` boxes ``[x, y, w, h]``.
        b: ``(M, 4)`` boxes ``[x, y, w, h]``.

    Returns:
        ``(N, M)`` float64 IoUs in [0, 1]; 0 where a box has no area.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    a_x1, a_y1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    b_x1, b_y1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    inter_w = np.minimum(a_x1[:, None], b_x1[None, :]) - np.maximum(a[:, 0][:, None], b[:, 0][None, :])
    inter_h = np.minimum(a_y1[:, None], b_y1[None, :]) - np.maximum(a[:, 1][:, None], b[:, 1][None, :])
    intersection = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    area_a = np.clip(a[:, 2], 0, None) * np.clip(a[:, 3], 0, None)
    area_b = np.clip(b[:, 2], 0, None) * np.clip(b[:, 3], 0, None)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


REACH_AFTER_S = 0.2
"""A track unseen for longer than this (one sampled frame at ``--fps 5``) may be continued farther off: `max_shift`
grows by itself for every second beyond it."""


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    last_seen_s: float


class IoUTracker:
    """Links boxes across frames of one video by IoU with each track's last box.

    Each call to `update` matches the frame's boxes to live tracks greedily, highest IoU first, accepting pairs
    whose IoU is at least `iou_threshold`. A box left over may then continue a track left over whose last box is
    about its size (sides within 1.5x) and whose centre is within `max_shift` of that box's larger side, nearest
    first: a face that moved fast between two sampled frames (at 5 fps, or a head turned quickly) keeps its id
    where the IoU alone falls just short. A track unseen for longer than `REACH_AFTER_S` reaches farther, by
    `max_shift` more for every second beyond it: a face that walks through a crowd while the detector misses it for
    most of a second (0.8 s and 0.62 box sides in `facenet_pytorch_crowd.mp4`, where the full detector found it on
    4 of 21 frames) keeps its id. Boxes still unmatched start new tracks, numbered 0, 1, 2, ... in the
    order they appear. A track not matched for more than `max_age_s` seconds ends; a face that comes back later
    gets a new id. Use one tracker per video.
    """

    def __init__(self, iou_threshold: float = 0.3, max_age_s: float = 1.0, max_shift: float = 0.5) -> None:
        """Creates an empty tracker.

        Args:
            iou_threshold: Lowest IoU for a box to continue a track.
            max_age_s: Seconds a track survives without a match.
            max_shift: Farthest a box's centre may lie from a track's last one, in that box's larger sides, to
                continue it when the IoU falls short (more for a track unseen longer than `REACH_AFTER_S`);
                0 = IoU only.
        """
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        if not 0.0 <= max_shift < 1.0:
            raise ValueError(f"max_shift must be in [0, 1) (box sides; 0 = IoU only), got {max_shift}")
        self.iou_threshold = float(iou_threshold)
        self.max_age_s = float(max_age_s)
        self.max_shift = float(max_shift)
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._last_timestamp_s = -np.inf

    def reset(self) -> None:
        """Forgets all tracks and restarts ids at 0 (for the next video)."""
        self._tracks = []
        self._next_id = 0
        self._last_timestamp_s = -np.inf

    def update(self, boxes: np.ndarray, timestamp_s: float) -> np.ndarray:
        """Assigns track ids to the boxes of the next frame.

        Args:
            boxes: ``(N, 4)`` boxes ``[x, y, w, h]`` of one frame (N may be 0).
            timestamp_s: The frame's time; frames must come in non-decreasing time order.

        Returns:
            ``(N,)`` int32 track ids, aligned with `boxes`.

        Raises:
            ValueError: if `timestamp_s` is earlier than the previous frame's.
        """
        if timestamp_s < self._last_timestamp_s:
            raise ValueError(
                f"frames must come in time order: got {timestamp_s} s after {self._last_timestamp_s} s"
            )
        self._last_timestamp_s = timestamp_s
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self._tracks = [t for t in self._tracks if timestamp_s - t.last_seen_s <= self.max_age_s]

        ids = np.full(len(boxes), -1, dtype=np.int32)
        if self._tracks and len(boxes):
            last = np.stack([t.box for t in self._tracks])
            box_taken = np.zeros(len(boxes), dtype=bool)
            track_taken = np.zeros(len(self._tracks), dtype=bool)

            def take(pairs: list[tuple[int, int]]) -> None:
                for box_index, track_index in pairs:
                    if box_taken[box_index] or track_taken[track_index]:
                        continue
                    box_taken[box_index] = track_taken[track_index] = True
                    track = self._tracks[track_index]
                    track.box = boxes[box_index]
                    track.last_seen_s = timestamp_s
                    ids[box_index] = track.track_id

            take(self._greedy(-iou_matrix(boxes, last), -self.iou_threshold))
            # Then the boxes the IoU pass left may continue the tracks it left (on most frames it leaves none).
            if self.max_shift > 0 and not box_taken.all() and not track_taken.all():
                unseen_s = np.array([timestamp_s - t.last_seen_s for t in self._tracks])
                reach = 1.0 + np.maximum(0.0, unseen_s - REACH_AFTER_S)  # in multiples of max_shift
                take(self._greedy(_centre_shift(boxes, last) / reach[None, :], self.max_shift))

        for box_index in np.flatnonzero(ids < 0):
            self._tracks.append(_Track(self._next_id, boxes[box_index], timestamp_s))
            ids[box_index] = self._next_id
            self._next_id += 1
        return ids

    @staticmethod
    def _greedy(cost: np.ndarray, limit: float) -> list[tuple[int, int]]:
        """(box, track) pairs with a cost of at most `limit`, cheapest first; a stable sort resolves ties in
        row-major (box, track) order, so results are deterministic. The caller skips pairs whose box or track
        is already taken."""
        order = np.argsort(cost, axis=None, kind="stable")
        pairs: list[tuple[int, int]] = []
        for flat in order:
            box_index, track_index = divmod(int(flat), cost.shape[1])
            if cost[box_index, track_index] > limit:
                break
            pairs.append((box_index, track_index))
        return pairs


def _centre_shift(boxes: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """``(N, M)``: distance between each box's centre and each track box's, in the box's larger side; infinite
    where the two differ in width or height by more than 1.5x (another face, nearer or farther)."""
    centre = boxes[:, :2] + boxes[:, 2:] / 2
    track_centre = tracks[:, :2] + tracks[:, 2:] / 2
    distance = np.linalg.norm(centre[:, None, :] - track_centre[None, :, :], axis=2)
    side = np.maximum(boxes[:, 2], boxes[:, 3])[:, None]
    shift = np.divide(distance, side, out=np.full_like(distance, np.inf), where=side > 0)
    ratio = np.maximum(boxes[:, None, 2:], 1e-9) / np.maximum(tracks[None, :, 2:], 1e-9)
    alike = ((ratio <= 1.5) & (ratio >= 1 / 1.5)).all(axis=2)
    return np.where(alike, shift, np.inf)


def assign_tracks(
    frames: Sequence[tuple[float, np.ndarray]], *, iou_threshold: float = 0.3, max_age_s: float = 1.0,
    max_shift: float = 0.5,
) -> list[np.ndarray]:
    """Runs a fresh `IoUTracker` over the frames of one video.

    Args:
        frames: ``(timestamp_s, boxes)`` per frame, boxes ``(N, 4)`` ``[x, y, w, h]``. Any order: frames are
            tracked in timestamp order (ties keep their given order), e.g. after gathering a video's segments.
        iou_threshold: See `IoUTracker`.
        max_age_s: See `IoUTracker`.
        max_shift: See `IoUTracker`.

    Returns:
        One int32 array of track ids per frame, in the order of `frames`.
    """
    tracker = IoUTracker(iou_threshold=iou_threshold, max_age_s=max_age_s, max_shift=max_shift)
    order = sorted(range(len(frames)), key=lambda i: frames[i][0])
    ids: list[np.ndarray] = [np.zeros(0, dtype=np.int32)] * len(frames)
    for i in order:
        timestamp_s, boxes = frames[i]
        ids[i] = tracker.update(boxes, timestamp_s)
    return ids
