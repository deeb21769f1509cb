"""Decode, detect and crop one time segment of one video: the CPU stage of the pipeline, free of Ray.

A segment turns into batches of rows (dicts of numpy arrays, one row per face per sampled frame, one row for a
sampled frame without faces) and ends with exactly one ``end`` row carrying the segment's counts, or one
``error`` row. Only small face crops at the classifier's input size leave this stage, never frames.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fer_core.config import AnnotateOptions
from fer_core.measures import MEASURE_COLUMNS, measure_faces
from fer_core.preprocess import Preprocessing, face_crops, to_channels
from fer_core.schedule import ScheduledDetector, detect_every_for

KIND_FACE = "face"
KIND_NOFACE = "noface"
KIND_END = "end"
KIND_ERROR = "error"

# Columns every batch of this stage carries, whatever its kind (Ray Data needs one schema per stage).
ROW_COLUMNS = (
    "video_id", "video_path", "segment_index", "n_segments", "kind", "frame_index", "timestamp_s", "face_index",
    "x", "y", "w", "h", "det_score", "rows_emitted", "frames_sampled", "error", "seconds",
    "duration_s", "fps", "width", "height", "decoder", *MEASURE_COLUMNS,
)
FACT_COLUMNS = ("duration_s", "fps", "width", "height", "decoder")

CHUNK_FRAMES = 32
"""Sampled frames per emitted batch: bounds memory and keeps the classifier fed."""


@dataclass(frozen=True)
class SegmentTask:
    """One segment of one video, planned by :func:`plan_video`."""

    video_id: str
    video_path: str
    segment_index: int
    n_segments: int
    start_s: float
    end_s: float | None
    error: str = ""
    """Set when planning failed (the video could not be probed): the segment then only reports the error."""
    duration_s: float = math.nan
    fps: float = math.nan
    width: int = 0
    height: int = 0
    decoder: str = ""

    def to_row(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "video_path": self.video_path,
            "segment_index": self.segment_index,
            "n_segments": self.n_segments,
            "start_s": self.start_s,
            "end_s": math.nan if self.end_s is None else self.end_s,
            "error": self.error,
            "duration_s": self.duration_s,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "decoder": self.decoder,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "SegmentTask":
        end = float(row["end_s"])
        return cls(
            str(row["video_id"]), str(row["video_path"]), int(row["segment_index"]), int(row["n_segments"]),
            float(row["start_s"]), None if math.isnan(end) else end, str(row["error"]),
            float(row["duration_s"]), float(row["fps"]), int(row["width"]), int(row["height"]), str(row["decoder"]),
        )


def plan_video(video_path: str, video_id: str, opts: AnnotateOptions) -> list[SegmentTask]:
    """Probe a video and split it into segments, each carrying the video's facts (duration, fps, size, decoder).

    A file that cannot be probed gives one segment carrying the error.
    """
    from fer_core import video

    try:
        with video.localize(video_path) as local:
            info = video.probe(local, decoder=opts.decoder)
    except Exception as e:  # any probe failure marks the video failed, never the job
        return [SegmentTask(video_id, video_path, 0, 1, 0.0, None, error=one_line(e))]
    bounds = video.plan_segments(info, opts.segment_s)
    return [
        SegmentTask(video_id, video_path, i, len(bounds), s, e, "", info.duration_s, info.fps, info.width,
                    info.height, info.decoder)
        for i, (s, e) in enumerate(bounds)
    ]


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class _Batch:
    """Accumulates rows column-wise."""

    def __init__(self, task: SegmentTask, crop_shape: tuple[int, ...]) -> None:
        self.task = task
        self.crop_shape = crop_shape
        self.cols: dict[str, list] = {c: [] for c in ROW_COLUMNS}
        self.crops: list[np.ndarray] = []

    def add(self, kind: str, frame_index: int, timestamp_s: float, face_index: int, box: np.ndarray | None,
            score: float, crop: np.ndarray | None, measures: dict[str, float] | None = None, **extra: Any) -> None:
        c = self.cols
        c["video_id"].append(self.task.video_id)
        c["video_path"].append(self.task.video_path)
        c["segment_index"].append(self.task.segment_index)
        c["n_segments"].append(self.task.n_segments)
        c["kind"].append(kind)
        c["frame_index"].append(frame_index)
        c["timestamp_s"].append(timestamp_s)
        c["face_index"].append(face_index)
        for k, v in zip("xywh", box if box is not None else (0, 0, 0, 0)):
            c[k].append(int(round(float(v))))
        c["det_score"].append(score)
        c["rows_emitted"].append(extra.get("rows_emitted", 0))
        c["frames_sampled"].append(extra.get("frames_sampled", 0))
        c["error"].append(extra.get("error", ""))
        c["seconds"].append(extra.get("seconds", 0.0))
        c["duration_s"].append(self.task.duration_s)
        c["fps"].append(self.task.fps)
        c["width"].append(self.task.width)
        c["height"].append(self.task.height)
        c["decoder"].append(self.task.decoder)
        for name in MEASURE_COLUMNS:
            c[name].append(measures[name] if measures is not None else math.nan)
        self.crops.append(crop if crop is not None else np.zeros(self.crop_shape, np.uint8))

    def __len__(self) -> int:
        return len(self.crops)

    def flush(self) -> dict[str, np.ndarray]:
        out = {
            "video_id": np.array(self.cols["video_id"], dtype=object),
            "video_path": np.array(self.cols["video_path"], dtype=object),
            "kind": np.array(self.cols["kind"], dtype=object),
            "error": np.array(self.cols["error"], dtype=object),
            "timestamp_s": np.array(self.cols["timestamp_s"], dtype=np.float64),
            "det_score": np.array(self.cols["det_score"], dtype=np.float32),
            "seconds": np.array(self.cols["seconds"], dtype=np.float64),
            "duration_s": np.array(self.cols["duration_s"], dtype=np.float64),
            "fps": np.array(self.cols["fps"], dtype=np.float64),
            "decoder": np.array(self.cols["decoder"], dtype=object),
            "crop": np.stack(self.crops) if self.crops else np.zeros((0, *self.crop_shape), np.uint8),
            **{name: np.array(self.cols[name], dtype=np.float32) for name in MEASURE_COLUMNS},
        }
        for name in ("segment_index", "n_segments", "frame_index", "face_index", "x", "y", "w", "h",
                     "rows_emitted", "frames_sampled", "width", "height"):
            out[name] = np.array(self.cols[name], dtype=np.int64)
        self.cols = {c: [] for c in ROW_COLUMNS}
        self.crops = []
        return out


def process_segment(
    task: SegmentTask,
    opts: AnnotateOptions,
    detector: Any,
    spec: Preprocessing,
) -> Iterator[dict[str, np.ndarray]]:
    """Decode, detect and crop one segment; yields batches, the last holding the ``end`` row.

    Decoding errors propagate (the caller turns them into an ``error`` row), so a failed segment never
    ends with an ``end`` row.
    """
    import cv2

    from fer_core import video

    cv2.setNumThreads(1)
    started = time.perf_counter()
    crop_shape = (spec.input_size, spec.input_size) + ((3,) if spec.channels == 3 else ())
    batch = _Batch(task, crop_shape)
    rows = frames = 0
    # A fresh schedule per segment: each starts with a full detection, so segments stay independent.
    # A lost face's window is searched as long as the tracker would continue its track.
    scheduled = ScheduledDetector(detector, detect_every_for(opts.detect_every, opts.fps, task.fps),
                                  keep_lost_s=opts.track_max_age_s)
    with video.localize(task.video_path) as local:
        for frame in video.iter_frames(
            local, sample_fps=opts.fps, start_s=task.start_s, end_s=task.end_s, decoder=opts.decoder
        ):
            frames += 1
            dets = scheduled.detect(frame.image, frame.timestamp_s)
            if len(dets) == 0:
                batch.add(KIND_NOFACE, frame.frame_index, frame.timestamp_s, -1, None, float("nan"), None)
            else:
                crops = face_crops(frame.image, dets.boxes, dets.landmarks, spec)
                if spec.channels == 1:
                    crops = to_channels(crops, 1)[..., 0]
                measures = measure_faces(frame.image, dets)
                for i in range(len(dets)):
                    batch.add(KIND_FACE, frame.frame_index, frame.timestamp_s, i, dets.boxes[i],
                              float(dets.scores[i]), crops[i], {k: float(v[i]) for k, v in measures.items()})
            if frames % CHUNK_FRAMES == 0:
                rows += len(batch)
                yield batch.flush()
    rows += len(batch)
    batch.add(KIND_END, -1, float("nan"), -1, None, float("nan"), None, rows_emitted=rows, frames_sampled=frames,
              seconds=time.perf_counter() - started)
    yield batch.flush()


def error_batch(task: SegmentTask, error: str, crop_shape: tuple[int, ...], seconds: float = 0.0) -> dict[str, np.ndarray]:
    """The single ``error`` row that replaces a failed segment's end row."""
    batch = _Batch(task, crop_shape)
    batch.add(KIND_ERROR, -1, float("nan"), -1, None, float("nan"), None, error=error, seconds=seconds)
    return batch.flush()
