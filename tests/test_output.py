"""Per-video assembly (rows in any order, segments, failures, tracking) and the atomic commit, without Ray."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fer_core.labels import PROB_COLUMNS
from fer_core.output import Assembler, OutputError, OutputStore
from fer_core.schema import FACES_SCHEMA, VIDEOS_SCHEMA
from fer_core.segment import KIND_END, KIND_FACE, KIND_NOFACE, ROW_COLUMNS, SegmentTask, error_batch


def test_schema_has_the_contract_columns():
    assert FACES_SCHEMA.names == [
        "video_id", "video_path", "frame_index", "timestamp_s", "face_index", "track_id", "x", "y", "w", "h",
        "det_score", "emotion", "confidence", *PROB_COLUMNS,
        "lm_right_eye_x", "lm_right_eye_y", "lm_left_eye_x", "lm_left_eye_y", "lm_nose_x", "lm_nose_y",
        "lm_mouth_right_x", "lm_mouth_right_y", "lm_mouth_left_x", "lm_mouth_left_y",
        "roll_deg", "yaw_deg", "pitch_deg", "sharpness", "brightness", "in_frame", "iod_px",
    ]
    for name in FACES_SCHEMA.names[FACES_SCHEMA.names.index("lm_right_eye_x"):]:
        assert FACES_SCHEMA.field(name).type == pa.float32(), name
    for name in ("video_path", "status", "error", "duration_s", "fps", "width", "height", "frames_sampled",
                 "frames_with_face", "faces", "detector", "model", "seconds"):
        assert name in VIDEOS_SCHEMA.names


def _rows(task: SegmentTask, frames: list[tuple[int, float, list[tuple[int, int]]]]) -> list[dict]:
    """Pipeline rows for frames [(index, t, [(x, y), ...])], each face 40x40, then the end row."""
    rows = []
    for fi, t, faces in frames:
        if not faces:
            rows.append(dict(kind=KIND_NOFACE, frame_index=fi, timestamp_s=t, face_index=-1, x=0, y=0))
        for k, (x, y) in enumerate(faces):
            rows.append(dict(kind=KIND_FACE, frame_index=fi, timestamp_s=t, face_index=k, x=x, y=y))
    n = len(rows)
    rows.append(dict(kind=KIND_END, frame_index=-1, timestamp_s=np.nan, face_index=-1, x=0, y=0, rows_emitted=n,
                     frames_sampled=len(frames)))
    return rows


def _batch(task: SegmentTask, rows: list[dict]) -> dict[str, np.ndarray]:
    cols = {c: [] for c in ROW_COLUMNS}
    for r in rows:
        for c in ROW_COLUMNS:
            default = {"video_id": task.video_id, "video_path": task.video_path, "segment_index": task.segment_index,
                       "n_segments": task.n_segments, "w": 40, "h": 40, "det_score": 0.9, "rows_emitted": 0,
                       "frames_sampled": 0, "error": "", "seconds": 0.5, "duration_s": 2.0, "fps": 10.0,
                       "width": 320, "height": 240, "decoder": "pyav"}.get(c)
            cols[c].append(r.get(c, default))
    out = {c: np.array(v, dtype=object if isinstance(v[0], str) else None) for c, v in cols.items()}
    probs = np.tile(np.array([0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.1], np.float32), (len(rows), 1))
    probs[out["kind"] != KIND_FACE] = np.nan
    for j, c in enumerate(PROB_COLUMNS):
        out[c] = probs[:, j]
    return out


def _assembler() -> Assembler:
    return Assembler(detector="yunet", model="m@1", track_iou=0.3, track_max_age_s=1.0, track_max_shift=0.5)


def test_video_completes_only_when_all_segments_and_rows_are_in():
    seg0 = SegmentTask("v1", "/v/a.mp4", 0, 2, 0.0, 1.0)
    seg1 = SegmentTask("v1", "/v/a.mp4", 1, 2, 1.0, None)
    r0 = _rows(seg0, [(0, 0.0, [(10, 10)]), (5, 0.5, [(12, 10), (100, 100)])])
    r1 = _rows(seg1, [(10, 1.0, [(14, 10)]), (15, 1.5, [])])
    asm = _assembler()
    # End rows may overtake data rows (batches pass different classifier actors).
    assert asm.add(_batch(seg0, [r0[-1]])) == []
    assert asm.add(_batch(seg1, r1)) == []
    assert asm.add(_batch(seg0, r0[:2])) == []
    done = asm.add(_batch(seg0, r0[2:-1]))
    assert len(done) == 1 and asm.pending() == []
    faces = done[0].faces.to_pandas()
    assert faces.frame_index.tolist() == [0, 5, 5, 10, 15]
    # The face that moves slowly keeps one track across the segment boundary; the other face gets its own.
    assert faces.track_id.tolist()[:4] == [0, 0, 1, 0] and pd.isna(faces.track_id.iloc[4])
    row = done[0].video_row
    assert row["status"] == "ok" and row["frames_sampled"] == 4 and row["faces"] == 4 and row["frames_with_face"] == 3
    assert faces.emotion.dropna().eq("happy").all()


def test_failed_segment_fails_video_and_drops_late_rows():
    seg0 = SegmentTask("v2", "/v/b.mp4", 0, 2, 0.0, 1.0)
    seg1 = SegmentTask("v2", "/v/b.mp4", 1, 2, 1.0, None)
    asm = _assembler()
    done = asm.add(error_batch(seg1, "decoder error at frame 12", (48, 48)) | {c: np.full(1, np.nan, np.float32) for c in PROB_COLUMNS})
    assert len(done) == 1 and done[0].faces is None
    assert done[0].video_row["status"] == "failed" and "frame 12" in done[0].video_row["error"]
    assert asm.add(_batch(seg0, _rows(seg0, [(0, 0.0, [(1, 1)])]))) == []


def test_store_commit_rerun_and_errors(tmp_path):
    store = OutputStore(str(tmp_path / "out"), {"model": "m@1"})
    store.check_writable()
    seg = SegmentTask("v3", "/v/c.mp4", 0, 1, 0.0, None)
    (result,) = _assembler().add(_batch(seg, _rows(seg, [(0, 0.0, [(5, 5)]), (3, 0.3, [])])))
    store.commit(result)
    assert store.finished() == {"v3": "ok"}
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]
    faces = pd.read_parquet(tmp_path / "out" / "faces")
    assert len(faces) == 2 and faces.face_index.isna().sum() == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not writable"):
        OutputStore(str(tmp_path / "file" / "out"), {}).check_writable()
    store.clear()
    assert store.finished() == {}
