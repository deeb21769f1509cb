"""Real-time annotation of a camera, a stream or a video file read as a stream, with the job's own pieces:
detector -> ``face_crops`` -> ``Classifier.predict_proba`` -> ``IoUTracker``, one frame at a time, into rows of
:data:`fer_core.schema.FACES_SCHEMA` (so live rows and job rows can be analysed alike).

OpenCV (``cv2.VideoCapture``) reads all three kinds of source and gives BGR frames; they are converted to RGB
once, in :func:`iter_source`, and everything after works in RGB like the rest of the library.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from fer_core.labels import EMOTIONS, PROB_COLUMNS
from fer_core.schema import FACES_SCHEMA, with_run_metadata
from fer_core.track import IoUTracker

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


class SourceError(RuntimeError):
    """A live source cannot be opened or read."""


# --------------------------------------------------------------------------------------------------
# Per-frame annotation


class FrameAnnotator:
    """Turns RGB frames of one source into faces-table rows: detect, crop, classify, track.

    Args:
        detector: A :class:`fer_core.detect.FaceDetector`.
        classifier: A :class:`fer_core.checkpoint.Classifier`; its preprocessing (crop margin, input size) is used.
        tracker: The source's tracker (a fresh ``IoUTracker()`` by default); frames must come in time order.
        video_id, video_path: Written on every row.

    Raises:
        ValueError: if the classifier's classes are not the seven FER-2013 classes.
    """

    def __init__(self, detector: Any, classifier: Any, tracker: IoUTracker | None = None, *, video_id: str,
                 video_path: str) -> None:
        if sorted(classifier.classes) != sorted(EMOTIONS):
            raise ValueError(f"the classifier's classes {classifier.classes} are not the seven classes {list(EMOTIONS)}")
        self.detector = detector
        self.classifier = classifier
        self.tracker = tracker if tracker is not None else IoUTracker()
        self.video_id = video_id
        self.video_path = video_path
        self.spec = classifier.meta.preprocessing
        # Probability columns in EMOTIONS order, whatever order the checkpoint lists its classes in.
        self._column_of_class = [classifier.classes.index(name) for name in EMOTIONS]

    def annotate(self, rgb: np.ndarray, frame_index: int, timestamp_s: float) -> list[dict[str, Any]]:
        """The rows of one frame: one per face by decreasing detector score, or one row with null face fields.

        Args:
            rgb: The frame, ``uint8`` ``(H, W, 3)`` RGB.
            frame_index: Position of the frame in the source (every frame read counts).
            timestamp_s: Its time in seconds; not earlier than the previous frame's.
        """
        from fer_core.measures import measure_faces
        from fer_core.preprocess import face_crops  # imports torch: only once there is a frame to annotate

        base = {"video_id": self.video_id, "video_path": self.video_path, "frame_index": int(frame_index),
                "timestamp_s": float(timestamp_s)}
        detections = self.detector.detect(rgb)
        boxes = np.round(detections.boxes).astype(np.int32)
        ids = self.tracker.update(boxes.astype(np.float32), float(timestamp_s))
        if len(detections) == 0:
            return [{**base, **{name: None for name in FACES_SCHEMA.names if name not in base}}]
        crops = face_crops(rgb, detections.boxes, detections.landmarks, self.spec)
        probs = self.classifier.predict_proba(crops)[:, self._column_of_class]
        measures = measure_faces(rgb, detections)
        rows = []
        for i in range(len(detections)):
            best = int(np.argmax(probs[i]))
            rows.append({
                **base, "face_index": i, "track_id": int(ids[i]),
                "x": int(boxes[i, 0]), "y": int(boxes[i, 1]), "w": int(boxes[i, 2]), "h": int(boxes[i, 3]),
                "det_score": float(detections.scores[i]), "emotion": EMOTIONS[best], "confidence": float(probs[i, best]),
                **{column: float(probs[i, j]) for j, column in enumerate(PROB_COLUMNS)},
                **{column: None if math.isnan(values[i]) else float(values[i]) for column, values in measures.items()},
            })
        return rows


def rows_table(rows: list[dict[str, Any]], metadata: dict[str, Any] | None = None) -> pa.Table:
    """Rows as a table of :data:`FACES_SCHEMA` (with the run metadata in the schema when given)."""
    schema = with_run_metadata(FACES_SCHEMA, metadata) if metadata else FACES_SCHEMA
    return pa.Table.from_pylist(rows, schema=schema)


# --------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Source:
    """A parsed live source.

    Attributes:
        kind: ``"camera"``, ``"stream"`` or ``"file"``.
        target: What ``cv2.VideoCapture`` opens: the camera index, the URL or the file path.
        video_id: For a file, the id the annotation job gives it (:func:`fer_core.video.video_id`); for a URL,
            the id of the URL; for a camera, the id of ``camera://<index>``.
        video_path: The source as given.
    """

    kind: str
    target: int | str
    video_id: str
    video_path: str

    @property
    def live(self) -> bool:
        """Cameras and streams: timestamps come from the wall clock, not from the container."""
        return self.kind != "file"


def parse_source(source: str) -> Source:
    """A camera index (``0``), a stream URL (rtsp, http, ...) or a video file.

    Raises:
        SourceError: a file that does not exist, or an unsupported URL scheme.
    """
    from fer_core.video import video_id

    text = str(source).strip()
    if text.isdigit():
        return Source("camera", int(text), video_id(f"camera://{int(text)}"), text)
    if "://" in text:
        if not text.lower().startswith(STREAM_SCHEMES):
            raise SourceError(f"unsupported source {text!r}: expected a camera index, a stream URL "
                              f"({', '.join(s[:-3] for s in STREAM_SCHEMES)}) or a video file")
        return Source("stream", text, video_id(text), text)
    if not os.path.exists(text):
        raise SourceError(f"source {text!r} is not a camera index, a stream URL or an existing video file")
    if os.path.isdir(text):
        raise SourceError(f"source {text!r} is a folder; pass a video file (or use jobs/annotate.py for folders)")
    return Source("file", text, video_id(text), text)


def open_capture(source: Source) -> Any:
    """Open the source with ``cv2.VideoCapture``.

    Raises:
        SourceError: OpenCV cannot open it.
    """
    import cv2

    capture = cv2.VideoCapture(source.target)
    if not capture.isOpened():
        capture.release()
        what = {"camera": "camera", "stream": "stream", "file": "video file"}[source.kind]
        raise SourceError(f"cannot open {what} {source.video_path!r} with OpenCV (not a readable video, "
                          "no such device, or the stream is unreachable)")
    if source.live:
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep latency low when annotation is slower than the source
    return capture


def iter_source(capture: Any, source: Source, *, sample_fps: float = 0.0, max_frames: int = 0
                ) -> Iterator[tuple[int, float, np.ndarray]]:
    """Frames of an opened source as ``(frame_index, timestamp_s, rgb)``, sampled on their timestamps.

    ``timestamp_s`` is the container time (``CAP_PROP_POS_MSEC``) for files, and seconds since the first frame
    on the wall clock for cameras and streams. A frame is kept when it is the first at or after an instant
    ``k / sample_fps`` (as the job samples); ``frame_index`` counts every frame read.

    Args:
        sample_fps: Frames per second to annotate; 0 = every frame.
        max_frames: Stop after yielding this many frames; 0 = until the source ends.

    Raises:
        SourceError: the source opened but gives no frame at all.
    """
    import cv2

    if not sample_fps >= 0 or math.isinf(sample_fps):
        raise ValueError(f"sample_fps must be a finite number >= 0, got {sample_fps!r}")
    started = None
    last_timestamp_s = 0.0
    last_interval = -math.inf
    frame_index = -1
    yielded = 0
    while max_frames <= 0 or yielded < max_frames:
        ok, bgr = capture.read()
        if not ok or bgr is None:
            if frame_index < 0:
                raise SourceError(f"{source.video_path!r} opened but gave no frame")
            return
        frame_index += 1
        if source.live:
            now = time.monotonic()
            started = now if started is None else started
            timestamp_s = now - started
        else:
            # Clamped to non-decreasing: the tracker needs time order, and some backends report jitter.
            timestamp_s = max(last_timestamp_s, capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
        last_timestamp_s = timestamp_s
        if sample_fps > 0:
            interval = math.floor((timestamp_s + 5e-4) * sample_fps)
            if interval <= last_interval:
                continue
            last_interval = interval
        yielded += 1
        yield frame_index, round(timestamp_s, 6), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------------------
# Output


class RowWriter:
    """Writes rows in :data:`FACES_SCHEMA` to Parquet or CSV (by the file's suffix), or CSV to a binary stream,
    in chunks as they come, so an interrupted session keeps what it wrote. The file is created with the first
    rows: a session that fails before annotating anything leaves none.

    Args:
        target: A ``.parquet`` or ``.csv`` path, or a binary stream (e.g. ``sys.stdout.buffer``) for CSV.
        metadata: Run metadata stored in the Parquet schema (model, detector, options).

    Raises:
        ValueError: a path with another suffix.
        OSError: a path whose folder does not exist.
    """

    def __init__(self, target: str | Any, metadata: dict[str, Any] | None = None) -> None:
        self.schema = with_run_metadata(FACES_SCHEMA, metadata) if metadata else FACES_SCHEMA
        self.rows = 0
        self.target = target
        self._writer: Any = None
        if isinstance(target, str):
            if os.path.splitext(target)[1].lower() not in (".parquet", ".csv"):
                raise ValueError(f"--out must end in .parquet or .csv, got {target!r}")
            folder = os.path.dirname(os.path.abspath(target))
            if not os.path.isdir(folder):
                raise OSError(f"cannot write {target!r}: folder {folder!r} does not exist")

    def _open(self) -> Any:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        if isinstance(self.target, str) and self.target.lower().endswith(".parquet"):
            return pq.ParquetWriter(self.target, self.schema)
        return pacsv.CSVWriter(self.target, FACES_SCHEMA)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._writer is None:
            self._writer = self._open()
        self._writer.write_table(rows_table(rows))
        self.rows += len(rows)
        if not isinstance(self.target, str):
            self.target.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# --------------------------------------------------------------------------------------------------
# A session


@dataclass
class LiveSession:
    """Annotates an opened source frame by frame, writing rows as it goes and showing the preview.

    ``frames`` and ``faces`` count what was annotated, also when :meth:`run` ends by an exception
    (``KeyboardInterrupt`` included): rows annotated so far are written before it propagates.
    """

    annotator: FrameAnnotator
    capture: Any
    source: Source
    writer: RowWriter
    preview: Preview | None = None
    sample_fps: float = 5.0
    """Frames annotated per second of source time; 0 = every frame."""
    max_frames: int = 0
    """Stop after this many annotated frames; 0 = until the source ends."""
    chunk_frames: int = 30
    """Frames between writes (1 = every frame, for stdout)."""
    on_note: Callable[[str], None] | None = None
    """Called with a line to tell the user (e.g. why the preview is off)."""
    frames: int = 0
    faces: int = 0

    def run(self) -> None:
        """Until the source ends, ``max_frames`` is reached or the user presses q in the preview.

        Raises:
            SourceError: the source opened but gives no frame.
        """
        pending: list[dict[str, Any]] = []
        try:
            for frame_index, timestamp_s, rgb in iter_source(self.capture, self.source, sample_fps=self.sample_fps,
                                                             max_frames=self.max_frames):
                rows = self.annotator.annotate(rgb, frame_index, timestamp_s)
                self.frames += 1
                self.faces += sum(r["face_index"] is not None for r in rows)
                pending.extend(rows)
                if self.frames % self.chunk_frames == 0:
                    self.writer.write(pending)
                    pending = []
                if self.preview is not None:
                    keep_going = self.preview.show(rgb, rows)
                    if self.preview.note and self.on_note is not None:
                        self.on_note(self.preview.note)
                        self.preview.note = ""
                    if not keep_going:
                        break
        finally:
            self.writer.write(pending)
            self.writer.close()
            if self.preview is not None:
                self.preview.close()


# --------------------------------------------------------------------------------------------------
# Preview window


def display_available() -> bool:
    """Whether a graphical display is configured (X11 or Wayland)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class Preview:
    """An OpenCV window showing annotated frames, when a display and a GUI-capable OpenCV exist.

    ``opencv-python-headless`` (this project's dependency) has no GUI: its ``imshow`` raises ``cv2.error``. The
    preview then turns itself off and keeps the reason in ``note``; annotation goes on.
    """

    def __init__(self, enabled: bool, *, explain: bool = False, title: str = "fer-video live (q to quit)") -> None:
        """Args:
            enabled: Show a window when a display exists.
            explain: Set ``note`` when there is no display (the user asked for a window explicitly).
        """
        self.title = title
        self.note = ""
        self.active = enabled and display_available()
        if enabled and explain and not self.active:
            self.note = "no display (DISPLAY / WAYLAND_DISPLAY unset): not showing a window"

    def show(self, rgb: np.ndarray, rows: list[dict[str, Any]]) -> bool:
        """Draw the rows on a copy of the frame and show it; False once the user pressed q or Esc."""
        if not self.active:
            return True
        import cv2

        from fer_core.overlay import draw_faces, faces_from_rows

        image = draw_faces(rgb.copy(), faces_from_rows(rows))
        try:
            cv2.imshow(self.title, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as e:
            self.active = False
            reason = " ".join(str(e).split())[:160]
            self.note = (f"this OpenCV build cannot open windows ({reason}); opencv-python-headless has no GUI: "
                         "install opencv-python to see the preview; annotation goes on")
            return True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self.active:
            import cv2

            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass
