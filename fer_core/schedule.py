"""Tracking-driven face detection: the full detector on every k-th sampled frame, a small search window around
each live face in between. Pure numpy + OpenCV, no Ray.

Consecutive sampled frames barely change, and a face found at one frame sits near the same place at the next
(the pattern of DeepStream's inference interval with a tracker and of MediaPipe's detect-then-track). So a
`ScheduledDetector` runs the wrapped detector on the whole frame only

- on the first frame it sees (each segment starts with one, so segments stay independent),
- on every ``every``-th frame after the last full detection (a face entering the picture is found then, at the
  latest ``every`` sampled frames after it appears); after a full detection that found a face the windows were
  not following (a face appeared) the interval drops back to 1 and then doubles with each full detection that
  finds nothing new, up to ``every``, so busy scenes are searched often and still ones rarely,
- on a scene cut (the frame's grey thumbnail differs from the previous frame's by more than ``cut_threshold``),
- whenever a live face is not found again in its window (it left, was occluded, or moved too far): the full
  detection then runs on that same frame, so nothing the full detector would have found is missed there,
- on the frame after a face was found again with a score below ``rescore_below`` (it is losing confidence).

A face that a full detection no longer finds (one that flickers below the detector's threshold, or turns away for a
moment) is not forgotten at once: given frame times, its window is still searched on the frames between full
detections for ``keep_lost_s`` seconds (the tracker's ``track_max_age_s``, so that a face found again there keeps
its track id), and it is returned only once found again. In ``face_recognition_short_hamilton_clip.mp4`` at
``--fps 5`` a face on stage that one full detection missed went unsearched for 1.2 s, longer than a track lives,
and came back under a new id; its window now finds it on the next frame. (The other switch the schedule caused on
the shared videos, a face in the crowd that the full detector found on only 4 of 21 frames, is the tracker's to
bridge: `fer_core.track`.)

In between, each face of the previous frame is searched for in a square window ``window`` times its box side,
cut from the full-resolution frame and downscaled by the same factor as a full detection, so the network sees the
face at the scale it would in a full detection and gives the same boxes, landmarks and scores; a large face's
window is downscaled further, to about ``window_face_px`` (64) pixels of face, and turned by the face's roll at its
last full detection so that the network sees it upright (downscaled that far, YuNet's landmarks lean towards an
upright face; turned, a face rolled by 20 degrees reads its roll again). ``every=1`` is the plain detector on
every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fer_core.detect import Detections, FaceDetector
from fer_core.measures import roll_from_eyes
from fer_core.track import iou_matrix

AUTO_INTERVAL_S = 0.25
"""With ``--detect-every 0`` (auto), a full detection at least every this many seconds of video: 8 sampled frames
at 30 fps, 2 at ``--fps 5`` (the schedule measured to keep face recall >= 0.99 against full detection on every
frame, ``benchmarks/annotate_throughput.py``)."""

THUMB_SIDE = 32
"""Side of the grey thumbnail compared between frames to find scene cuts."""


def detect_every_for(detect_every: int, sample_fps: float, video_fps: float) -> int:
    """The full-detection interval in sampled frames for one video: `detect_every` when given (>= 1), else
    (0 = auto) enough sampled frames to span `AUTO_INTERVAL_S` at the rate frames are sampled, at least 1."""
    if detect_every >= 1:
        return int(detect_every)
    known = video_fps == video_fps and 0 < video_fps < math.inf  # a still image or a broken container has none
    if sample_fps > 0:
        rate = min(sample_fps, video_fps) if known else sample_fps
    elif known:
        rate = video_fps
    else:
        return 1
    return max(1, math.ceil(AUTO_INTERVAL_S * rate - 1e-9))


def schedule_description(detect_every: int, keep_lost_s: float) -> dict[str, Any]:
    """What the run metadata records of the detection schedule (the window settings are the defaults; the job
    keeps a lost face searched for its ``track_max_age_s``)."""
    defaults = ScheduledDetector.__init__.__kwdefaults__
    return {"detect_every": int(detect_every), "auto_interval_s": AUTO_INTERVAL_S if detect_every == 0 else None,
            **{key: defaults[key] for key in ("window", "window_face_px", "cut_threshold", "rescore_below",
                                              "match_iou")},
            "keep_lost_s": float(keep_lost_s)}


@dataclass
class ScheduleStats:
    """What a `ScheduledDetector` did: sampled frames seen, full-frame detections and window searches run."""

    frames: int = 0
    full: int = 0
    windows: int = 0
    cuts: int = 0
    lost: int = 0
    found_again: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class ScheduledDetector:
    """Wraps a `FaceDetector` with per-stream state; call `detect` on the sampled frames of one stream in order.

    Args:
        detector: The full-frame detector (YuNet or Haar).
        every: Full detection on every ``every``-th sampled frame at least; 1 = on every frame.
        window: Side of each face's search window, in multiples of the larger side of its last box.
        cut_threshold: Mean absolute difference (grey levels, 0-255) between consecutive frames' 32x32 grey
            thumbnails above which a frame counts as a scene cut.
        rescore_below: A face found again in its window with a score below this gets a full detection on the
            next frame.
        match_iou: A window detection continues a face when its box overlaps the face's last box by this IoU.
        keep_lost_s: Seconds a face no longer found keeps its window searched between full detections, when
            `detect` is given frame times (0 = not at all).
        window_face_px: Windows are downscaled further where needed so the face in them is at most about this
            many pixels (a large face needs no more to be found again, and the window costs far less). On the 13
            shared videos at every frame (`benchmarks/detect_schedule.py`), against the full detector on every
            frame: 64 px took 0.46 of its time, 160 px 0.77, at recall 0.992 and 0.990; the landmarks read
            within 2.0 / 4.5 / 4.2 degrees of its roll / yaw / pitch on average at 64 px, 2.4 / 3.9 / 3.9 at 160.
    """

    def __init__(self, detector: FaceDetector, every: int = 1, *, window: float = 2.5, cut_threshold: float = 30.0,
                 rescore_below: float = 0.85, match_iou: float = 0.3, window_face_px: int = 64,
                 keep_lost_s: float = 1.0) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 (1 = the full detector on every frame), got {every}")
        if window < 1.2:
            raise ValueError(f"window must be at least 1.2 box sides, got {window}")
        if not keep_lost_s >= 0:
            raise ValueError(f"keep_lost_s must be >= 0 seconds (0 = forget a lost face at once), got {keep_lost_s}")
        self.detector = detector
        self.every = int(every)
        self.window = float(window)
        self.cut_threshold = float(cut_threshold)
        self.rescore_below = float(rescore_below)
        self.match_iou = float(match_iou)
        self.window_face_px = int(window_face_px)
        self.keep_lost_s = float(keep_lost_s)
        self.stats = ScheduleStats()
        self._live = Detections.empty()
        self._anchor_roll = np.zeros(0, np.float32)  # each live face's roll at its last full detection
        self._seen_s = np.zeros(0)  # each live face's last frame time (NaN without times)
        # Faces a full detection no longer found: last box, roll and time; searched in windows until keep_lost_s.
        self._lost_boxes = np.zeros((0, 4), np.float32)
        self._lost_roll = np.zeros(0, np.float32)
        self._lost_s = np.zeros(0)
        self._now = float("nan")
        self._since_full = 0
        self._full_next = True
        self._interval = 1
        self._thumb: np.ndarray | None = None

    def _thumbnail(self, image: np.ndarray) -> np.ndarray:
        import cv2

        # Every 4th pixel of a frame of up to 4 * 128 px (every 8th of 1080p) is plenty for a 32x32 mean, and costs
        # a small fraction of a window search.
        stride = max(1, max(image.shape[:2]) // (4 * THUMB_SIDE))
        sparse = np.ascontiguousarray(image[::stride, ::stride])
        gray = sparse if sparse.ndim == 2 else cv2.cvtColor(sparse, cv2.COLOR_RGB2GRAY)
        return cv2.resize(gray, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)

    def _full(self, image: np.ndarray, reason: str) -> Detections:
        self.stats.full += 1
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        self._since_full = 0
        found = self.detector.detect(image)
        # Back off while full detections find nothing the windows didn't follow; a face that appeared (or one that
        # was lost) brings the next full detection back to the next frame.
        appeared = len(found) > 0 and (
            len(self._live) == 0 or bool((iou_matrix(found.boxes, self._live.boxes).max(axis=1) < self.match_iou).any())
        )
        surprise = appeared or reason in ("face lost", "scene cut", "first frame")
        self._interval = 1 if surprise else min(self.every, self._interval * 2)
        if reason == "scene cut":
            self._forget_lost()
        else:
            self._keep_lost(found)
        self._live = found
        self._anchor_roll = roll_from_eyes(found.landmarks)
        self._seen_s = np.full(len(found), self._now)
        self._full_next = bool(len(found)) and bool((found.scores < self.rescore_below).any())
        return found

    def _keep_lost(self, found: Detections) -> None:
        """After a full detection: the live and lost faces it did not find again are (still) lost, those it found
        are not; lost faces older than ``keep_lost_s`` are forgotten. Without frame times nothing is kept."""
        if not (self.keep_lost_s > 0 and self._now == self._now and self.every > 1):
            self._forget_lost()
            return
        boxes = np.concatenate([self._live.boxes.astype(np.float32), self._lost_boxes])
        rolls = np.concatenate([self._anchor_roll.astype(np.float32), self._lost_roll])
        seen = np.concatenate([self._seen_s, self._lost_s])
        missing = np.ones(len(boxes), bool)
        if len(boxes) and len(found):
            missing = iou_matrix(boxes, found.boxes).max(axis=1) < self.match_iou
        keep = missing & (self._now - seen <= self.keep_lost_s)
        self._lost_boxes, self._lost_roll, self._lost_s = boxes[keep], rolls[keep], seen[keep]

    def _forget_lost(self, which: np.ndarray | None = None) -> None:
        """Stops searching for the lost faces marked in `which` (all by default)."""
        keep = np.zeros(len(self._lost_s), bool) if which is None else ~which
        self._lost_boxes, self._lost_roll = self._lost_boxes[keep], self._lost_roll[keep]
        self._lost_s = self._lost_s[keep]

    def _search(self, image: np.ndarray, box: np.ndarray, roll_deg: float) -> Detections | None:
        """The detection in the face's window that continues `box` (IoU >= ``match_iou``), or None."""
        side = self.window * float(max(box[2], box[3]))
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        self.stats.windows += 1
        found = self.detector.detect_region(image, np.array([cx - side / 2, cy - side / 2, side, side]),
                                            max_side=round(self.window * self.window_face_px), roll_deg=roll_deg)
        if len(found):
            overlap = iou_matrix(box[None, :], found.boxes)[0]
            best = int(np.argmax(overlap))
            if overlap[best] >= self.match_iou:
                return found[best]
        return None

    def detect(self, image: np.ndarray, timestamp_s: float | None = None) -> Detections:
        """The faces in the next sampled frame of the stream (same contract as `FaceDetector.detect`).

        ``timestamp_s``, the frame's time, lets a face that a full detection no longer finds keep its window
        searched for ``keep_lost_s`` (without it, a lost face is forgotten at once)."""
        self.stats.frames += 1
        self._now = float("nan") if timestamp_s is None else float(timestamp_s)
        thumb = self._thumbnail(image) if self.every > 1 else None
        previous, self._thumb = self._thumb, thumb
        if self.every == 1:
            return self._full(image, "every frame")
        if previous is None:
            return self._full(image, "first frame")
        if float(np.abs(thumb - previous).mean()) > self.cut_threshold:
            self.stats.cuts += 1
            return self._full(image, "scene cut")
        self._since_full += 1
        if self._since_full >= self._interval:
            return self._full(image, "interval")
        if self._full_next:
            return self._full(image, "low score")
        self._forget_lost(self._now - self._lost_s > self.keep_lost_s)
        if len(self._live) == 0 and len(self._lost_boxes) == 0:
            return self._live
        kept: list[Detections] = []
        anchors: list[float] = []
        for i in range(len(self._live)):
            again = self._search(image, self._live.boxes[i], float(self._anchor_roll[i]))
            if again is None:
                self.stats.lost += 1
                return self._full(image, "face lost")
            kept.append(again)
            anchors.append(float(self._anchor_roll[i]))
        still_lost = np.ones(len(self._lost_boxes), bool)
        for i in range(len(self._lost_boxes)):
            again = self._search(image, self._lost_boxes[i], float(self._lost_roll[i]))
            if again is not None:
                self.stats.found_again += 1
                still_lost[i] = False
                kept.append(again)
                anchors.append(float(self._lost_roll[i]))
        self._forget_lost(~still_lost)
        merged = _concat(kept)
        order = _unique_by_score(merged, 0.5)
        merged = merged[order]
        self._live = merged
        self._anchor_roll = np.array(anchors, np.float32)[order]
        self._seen_s = np.full(len(merged), self._now)
        self._full_next = bool((merged.scores < self.rescore_below).any())
        return merged

    def describe(self) -> dict[str, Any]:
        """The schedule's settings, to record beside the detector's."""
        return {"detect_every": self.every, "window": self.window, "window_face_px": self.window_face_px,
                "cut_threshold": self.cut_threshold, "rescore_below": self.rescore_below, "match_iou": self.match_iou,
                "keep_lost_s": self.keep_lost_s}


def _concat(parts: list[Detections]) -> Detections:
    if not parts:
        return Detections.empty()
    return Detections(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]),
                      np.concatenate([p.landmarks for p in parts]), np.concatenate([p.in_frame for p in parts]))


def _unique_by_score(found: Detections, iou: float) -> np.ndarray:
    """Indices of the detections to keep, by decreasing score: the higher-scoring of two windows' detections
    of one face (two faces close together can both find the same face in their windows)."""
    order = np.argsort(-found.scores, kind="stable")
    overlap = iou_matrix(found.boxes, found.boxes)
    keep: list[int] = []
    for i in order.tolist():
        if all(overlap[i, j] < iou for j in keep):
            keep.append(i)
    return np.array(keep, dtype=np.int64)
