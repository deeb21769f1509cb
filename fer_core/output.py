"""Per-video assembly and atomic commit of the output tables.

Rows of a video arrive from the pipeline in any order and from several segments. The :class:`Assembler` holds
them (small rows, no crops) until every segment has reported, runs the tracker over the whole video in
timestamp order, and hands back the video's faces table and its row of the videos table. The
:class:`OutputStore` then writes ``faces/<video_id>.parquet`` and, last, ``videos/<video_id>.parquet``: a video
counts as done only once its videos row exists, so an interrupted run leaves no half-written video visible.
"""

from __future__ import annotations

import math
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fer_core import storage
from fer_core.labels import EMOTIONS, PROB_COLUMNS
from fer_core.measures import MEASURE_COLUMNS
from fer_core.schema import FACES_SCHEMA, STATUS_FAILED, STATUS_OK, VIDEOS_SCHEMA, with_run_metadata
from fer_core.segment import KIND_END, KIND_ERROR, KIND_FACE
from fer_core.track import IoUTracker

FACES_DIR = "faces"
VIDEOS_DIR = "videos"


class OutputError(RuntimeError):
    """The output location cannot be used."""


@dataclass
class _VideoState:
    video_path: str
    n_segments: int
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)
    rows_seen: dict[int, int] = field(default_factory=dict)
    rows_expected: dict[int, int] = field(default_factory=dict)
    frames_sampled: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)

    def complete(self) -> bool:
        if len(self.rows_expected) < self.n_segments:
            return False
        return all(self.rows_seen.get(s, 0) >= n for s, n in self.rows_expected.items())


@dataclass
class VideoResult:
    """What the assembler hands over for one finished video."""

    video_id: str
    faces: pa.Table | None
    """None for a failed video."""
    video_row: dict[str, Any]


class Assembler:
    """Collects classified rows per video and finishes a video once all its segments are in."""

    def __init__(self, *, detector: str, model: str, track_iou: float, track_max_age_s: float,
                 track_max_shift: float) -> None:
        self.detector = detector
        self.model = model
        self.track_iou = track_iou
        self.track_max_age_s = track_max_age_s
        self.track_max_shift = track_max_shift
        self.videos: dict[str, _VideoState] = {}
        self.finished: set[str] = set()

    def add(self, batch: dict[str, np.ndarray]) -> list[VideoResult]:
        """Take one batch from the pipeline; return the videos it completed."""
        kinds = batch["kind"]
        done: list[VideoResult] = []
        touched = []
        for vid in np.unique(batch["video_id"]):
            if vid in self.finished:
                continue  # late rows of a video already failed by another segment
            m = batch["video_id"] == vid
            first = int(np.argmax(m))
            state = self.videos.get(vid)
            if state is None:
                state = self.videos[vid] = _VideoState(str(batch["video_path"][first]), int(batch["n_segments"][first]))
            data_rows = m & (kinds != KIND_END) & (kinds != KIND_ERROR)
            if data_rows.any():
                state.parts.append({k: v[data_rows] for k, v in batch.items()})
                segs, counts = np.unique(batch["segment_index"][data_rows], return_counts=True)
                for s, c in zip(segs.tolist(), counts.tolist()):
                    state.rows_seen[s] = state.rows_seen.get(s, 0) + c
            for i in np.flatnonzero(m & ((kinds == KIND_END) | (kinds == KIND_ERROR))):
                seg = int(batch["segment_index"][i])
                state.seconds += float(batch["seconds"][i])
                if kinds[i] == KIND_ERROR:
                    state.errors.append(str(batch["error"][i]))
                    state.rows_expected[seg] = 0
                else:
                    state.rows_expected[seg] = int(batch["rows_emitted"][i])
                    state.frames_sampled += int(batch["frames_sampled"][i])
                if not state.facts and batch["decoder"][i]:
                    state.facts = {k: batch[k][i] for k in ("duration_s", "fps", "width", "height", "decoder")}
            touched.append(vid)
        for vid in touched:
            state = self.videos[vid]
            # A failed segment fails the video at once; later rows of its other segments are dropped.
            if state.errors or state.complete():
                done.append(self._finish(vid))
        return done

    def pending(self) -> list[str]:
        """Videos started but not finished."""
        return list(self.videos)

    def _finish(self, vid: str) -> VideoResult:
        state = self.videos.pop(vid)
        self.finished.add(vid)
        parts = state.parts
        facts = state.facts
        row: dict[str, Any] = {
            "video_id": vid,
            "video_path": state.video_path,
            "duration_s": _num(facts.get("duration_s")),
            "fps": _num(facts.get("fps")),
            "width": int(facts["width"]) if facts.get("width") else None,
            "height": int(facts["height"]) if facts.get("height") else None,
            "decoder": str(facts.get("decoder")) or None if facts else None,
            "detector": self.detector,
            "model": self.model,
            "seconds": state.seconds,
        }
        if state.errors:
            # One line however many segments failed: the first error, and how many more there were.
            errors = list(dict.fromkeys(state.errors))
            error = errors[0] + (f" (and {len(errors) - 1} more segment errors)" if len(errors) > 1 else "")
            row.update(status=STATUS_FAILED, error=error, frames_sampled=None,
                       frames_with_face=None, faces=None)
            return VideoResult(vid, None, row)
        table = self._faces_table(vid, state.video_path, parts)
        kinds_face = table.column("face_index").is_valid()
        frames_with_face = len(set(table.filter(kinds_face).column("frame_index").to_pylist()))
        row.update(status=STATUS_OK, error=None, frames_sampled=state.frames_sampled,
                   frames_with_face=frames_with_face, faces=int(pa.compute.sum(kinds_face.cast(pa.int64())).as_py() or 0))
        return VideoResult(vid, table, row)

    def _faces_table(self, vid: str, path: str, parts: list[dict[str, np.ndarray]]) -> pa.Table:
        if parts:
            cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "crop"}
        else:
            cols = {k: np.zeros(0) for k in ("timestamp_s", "frame_index", "face_index", "kind", "x", "y", "w", "h",
                                             "det_score", *PROB_COLUMNS, *MEASURE_COLUMNS)}
        order = np.lexsort((cols["face_index"], cols["frame_index"]))
        cols = {k: v[order] for k, v in cols.items()}
        n = len(order)
        is_face = cols["kind"] == KIND_FACE if n else np.zeros(0, bool)
        track = np.full(n, -1, dtype=np.int64)
        tracker = IoUTracker(iou_threshold=self.track_iou, max_age_s=self.track_max_age_s,
                             max_shift=self.track_max_shift)
        frame_index = cols["frame_index"]
        boundaries = np.flatnonzero(np.diff(frame_index)) + 1 if n else np.zeros(0, int)
        for idx in np.split(np.arange(n), boundaries):
            if len(idx) == 0:
                continue
            faces = idx[is_face[idx]]
            boxes = np.stack([cols[k][faces] for k in "xywh"], axis=1).astype(np.float32) if len(faces) else np.zeros((0, 4), np.float32)
            ids = tracker.update(boxes, float(cols["timestamp_s"][idx[0]]))
            track[faces] = ids
        probs = np.stack([cols[c] for c in PROB_COLUMNS], axis=1).astype(np.float32) if n else np.zeros((0, len(EMOTIONS)), np.float32)
        best = probs.argmax(1) if n else np.zeros(0, int)
        emotion = np.array(EMOTIONS, dtype=object)[best] if n else np.zeros(0, object)

        def masked(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
            return pa.array(values, type=dtype, mask=~is_face)

        arrays = {
            "video_id": pa.array([vid] * n, pa.string()),
            "video_path": pa.array([path] * n, pa.string()),
            "frame_index": pa.array(frame_index.astype(np.int64), pa.int64()),
            "timestamp_s": pa.array(cols["timestamp_s"].astype(np.float64), pa.float64()),
            "face_index": masked(cols["face_index"].astype(np.int32), pa.int32()),
            "track_id": masked(track.astype(np.int32), pa.int32()),
            **{k: masked(cols[k].astype(np.int32), pa.int32()) for k in "xywh"},
            "det_score": masked(cols["det_score"].astype(np.float32), pa.float32()),
            "emotion": pa.array(emotion, pa.string(), mask=~is_face),
            "confidence": masked(probs.max(1) if n else np.zeros(0, np.float32), pa.float32()),
            **{c: masked(probs[:, j], pa.float32()) for j, c in enumerate(PROB_COLUMNS)},
            # NaN measures (no landmarks, a degenerate box) are nulls, like the fields of a frame without a face.
            **{c: pa.array(cols[c].astype(np.float32), pa.float32(), mask=~is_face | np.isnan(cols[c].astype(np.float32)))
               for c in MEASURE_COLUMNS},
        }
        return pa.Table.from_arrays([arrays[f.name] for f in FACES_SCHEMA], schema=FACES_SCHEMA)


def _num(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


class OutputStore:
    """The ``--out`` location: a local folder or a bucket URI holding ``faces/`` and ``videos/``."""

    def __init__(self, root: str, run_metadata: dict[str, Any]) -> None:
        self.root = storage.absolute(root)
        self.fs, self.path = storage.resolve(self.root)
        self.run_metadata = run_metadata

    def check_writable(self) -> None:
        """Create the folders and write / delete a probe file, so a bad --out fails before any work."""
        probe = posixpath.join(self.path, f".write-test-{uuid.uuid4().hex}")
        try:
            for sub in (FACES_DIR, VIDEOS_DIR):
                self.fs.create_dir(posixpath.join(self.path, sub), recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except (OSError, pa.ArrowException) as e:
            raise OutputError(f"--out {self.root!r} is not writable ({' '.join(str(e).split())}); pass a folder or bucket you can write to") from e

    def clear(self) -> None:
        """Delete previous results (for --overwrite)."""
        for sub in (FACES_DIR, VIDEOS_DIR):
            d = posixpath.join(self.path, sub)
            if self.fs.get_file_info(d).type != pa.fs.FileType.NotFound:
                self.fs.delete_dir_contents(d)

    def finished(self) -> dict[str, str]:
        """video_id -> status of the videos committed by earlier runs."""
        d = posixpath.join(self.path, VIDEOS_DIR)
        info = self.fs.get_file_info(pa.fs.FileSelector(d, allow_not_found=True))
        out = {}
        for f in info:
            name = posixpath.basename(f.path)
            if f.type == pa.fs.FileType.File and name.endswith(".parquet") and not name.startswith((".", "_")):
                t = pq.read_table(f.path, filesystem=self.fs, columns=["video_id", "status"])
                for vid, status in zip(t.column("video_id").to_pylist(), t.column("status").to_pylist()):
                    out[vid] = status
        return out

    def commit(self, result: VideoResult) -> None:
        """Write the video's faces (if ok), then its videos row: the row makes the video visible as done.

        Idempotent: committing a video again (a re-run after a crash between the two files) replaces both.

        Raises:
            OutputError: when the output location fails; videos committed before stay intact.
        """
        faces_path = posixpath.join(self.path, FACES_DIR, f"{result.video_id}.parquet")
        videos_path = posixpath.join(self.path, VIDEOS_DIR, f"{result.video_id}.parquet")
        try:
            if result.faces is not None:
                self._write(result.faces.replace_schema_metadata(with_run_metadata(FACES_SCHEMA, self.run_metadata).metadata), faces_path)
            elif self.fs.get_file_info(faces_path).type == pa.fs.FileType.File:
                self.fs.delete_file(faces_path)  # a failed re-run must not leave an older run's rows behind
            _test_hook_after_faces()
            row = pa.Table.from_pylist([result.video_row], schema=with_run_metadata(VIDEOS_SCHEMA, self.run_metadata))
            self._write(row, videos_path)
        except (OSError, pa.ArrowException) as e:
            name = posixpath.basename(str(result.video_row["video_path"]))
            raise OutputError(
                f"--out {self.root!r} failed while committing {name!r}; the videos committed before are intact: fix "
                f"the output location and run the same command again to resume ({_reason_first(e)[:300]})"
            ) from e

    def _write(self, table: pa.Table, path: str) -> None:
        if isinstance(self.fs, pa.fs.LocalFileSystem):
            # Write beside the target under a hidden name (readers skip it), then rename atomically.
            tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
            try:
                pq.write_table(table, tmp, filesystem=self.fs)
                os.replace(tmp, path)
            finally:
                if os.path.lexists(tmp):  # the write failed half-way: leave no stray file behind
                    try:
                        os.remove(tmp)
                    except OSError:
                        pass
        else:
            # Object stores make an object visible only once its upload completes.
            pq.write_table(table, path, filesystem=self.fs)


def _reason_first(e: BaseException) -> str:
    """An I/O error on one line with its reason before the (often long) path: Arrow puts the operating system's
    reason last, after "Detail:", where a cut-off message would lose it."""
    text = " ".join(str(e).split())
    head, sep, detail = text.partition(" Detail: ")
    return f"{detail}: {head}" if sep else text


TEST_KILL_AFTER_FACES_ENV = "FER_TEST_KILL_AFTER_FACES"
"""Test hook, for the fault tests only (``tests/test_faults.py``): with this environment variable set to N, the
process SIGKILLs itself right after writing the faces file of the N-th video it commits, before that video's
videos row: the worst moment for a crash. Unset (always, outside those tests) it does nothing."""

_faces_written = 0


def _test_hook_after_faces() -> None:
    global _faces_written  # counts commits of this process, for the test hook only
    target = os.environ.get(TEST_KILL_AFTER_FACES_ENV)
    if not target:
        return
    _faces_written += 1
    if _faces_written == int(target):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
