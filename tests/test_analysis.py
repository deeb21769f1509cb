"""fer_core.analysis on tiny synthetic timelines of the real schema, and once on the real job's output."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fer_core.analysis import (
    MEAN_PROB_COLUMNS,
    SHARE_COLUMNS,
    TimelineError,
    emotion_windows,
    frame_durations,
    load_timelines,
    smooth_tracks,
    track_summary,
    video_summary,
)
from fer_core.labels import EMOTIONS, PROB_COLUMNS
from fer_core.schema import FACES_SCHEMA, VIDEOS_SCHEMA

# --------------------------------------------------------------------------------------------------
# Tiny timelines of the real schema


def probs_for(emotion: str, p: float = 0.7) -> dict[str, float]:
    """Probabilities with `p` on `emotion` and the rest spread evenly."""
    rest = (1 - p) / (len(EMOTIONS) - 1)
    return {f"p_{e}": (p if e == emotion else rest) for e in EMOTIONS}


def face_row(vid: str, frame: int, t: float, face: int, track: int, emotion: str, p: float = 0.7,
             box: tuple[int, int, int, int] = (10, 10, 40, 40)) -> dict:
    probs = probs_for(emotion, p)
    return {
        "video_id": vid, "video_path": f"/v/{vid}.mp4", "frame_index": frame, "timestamp_s": t,
        "face_index": face, "track_id": track, "x": box[0], "y": box[1], "w": box[2], "h": box[3],
        "det_score": 0.9, "emotion": emotion, "confidence": max(probs.values()), **probs,
    }


def blank_row(vid: str, frame: int, t: float) -> dict:
    return {"video_id": vid, "video_path": f"/v/{vid}.mp4", "frame_index": frame, "timestamp_s": t}


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=FACES_SCHEMA)


def frame(rows: list[dict]) -> pd.DataFrame:
    """As load_timelines / pd.read_parquet give it."""
    return table(rows).to_pandas()


def video_rows(*specs: tuple[str, str]) -> list[dict]:
    return [
        {"video_id": vid, "video_path": f"/v/{vid}.mp4", "status": status,
         "error": None if status == "ok" else "zero-byte file", "duration_s": 5.0 if status == "ok" else None}
        for vid, status in specs
    ]


def write_run(out: Path, faces: list[dict], videos: list[dict]) -> Path:
    (out / "faces").mkdir(parents=True)
    (out / "videos").mkdir(parents=True)
    for vid in {r["video_id"] for r in faces}:
        pq.write_table(table([r for r in faces if r["video_id"] == vid]), out / "faces" / f"{vid}.parquet")
    for r in videos:
        pq.write_table(pa.Table.from_pylist([r], schema=VIDEOS_SCHEMA), out / "videos" / f"{r['video_id']}.parquet")
    return out


# One video "a": 10 frames at 2 fps (0.0 .. 4.5 s). Track 0 is happy in frames 0-5, track 1 sad in frames 2-3,
# frames 6-9 have no face.
VIDEO_A = (
    [face_row("a", i * 15, i * 0.5, 0, 0, "happy") for i in range(2)]
    + [r for i in (2, 3) for r in (face_row("a", i * 15, i * 0.5, 0, 0, "happy"),
                                   face_row("a", i * 15, i * 0.5, 1, 1, "sad", box=(100, 10, 40, 40)))]
    + [face_row("a", i * 15, i * 0.5, 0, 0, "happy") for i in (4, 5)]
    + [blank_row("a", i * 15, i * 0.5) for i in range(6, 10)]
)


# --------------------------------------------------------------------------------------------------
# load_timelines


def test_load_round_trip_sorted_and_uri(tmp_path):
    rows = VIDEO_A[::-1] + [face_row("b", 0, 0.0, 0, 0, "angry")]
    out = write_run(tmp_path / "run", rows, video_rows(("a", "ok"), ("b", "ok"), ("c", "failed")))
    (out / "faces" / ".a.parquet.123.tmp").write_bytes(b"half-written")  # an in-progress write is skipped
    faces, videos = load_timelines(out)
    assert list(faces.columns) == FACES_SCHEMA.names and list(videos.columns) == VIDEOS_SCHEMA.names
    assert len(faces) == len(rows) and len(videos) == 3
    a = faces[faces.video_id == "a"]
    assert a.timestamp_s.is_monotonic_increasing
    assert a.face_index.tolist()[:6] == [0, 0, 0, 1, 0, 1]
    uri_faces, _ = load_timelines(f"file://{out}")
    pd.testing.assert_frame_equal(faces, uri_faces)


def test_load_skips_faces_of_unfinished_videos(tmp_path):
    # "d" was interrupted after its faces file and before its videos row: not done, not counted.
    out = write_run(tmp_path / "run", VIDEO_A + [face_row("d", 0, 0.0, 0, 0, "sad")], video_rows(("a", "ok")))
    faces, _ = load_timelines(out)
    assert set(faces.video_id) == {"a"}


def test_load_all_failed_gives_empty_faces(tmp_path):
    out = write_run(tmp_path / "run", [], video_rows(("c", "failed")))
    faces, videos = load_timelines(out)
    assert faces.empty and list(faces.columns) == FACES_SCHEMA.names
    summary = video_summary(faces, videos)
    assert summary.loc[0, "status"] == "failed" and summary.loc[0, "frames_sampled"] == 0


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "does not exist"),
        ("no_videos_dir", "does not exist"),
        ("no_parquet", "holds no Parquet files"),
        ("not_parquet", "not a readable Parquet file"),
        ("missing_column", "missing columns p_neutral"),
        ("wrong_type", "timestamp_s is string, expected double"),
        ("empty_run", "records no video"),
    ],
)
def test_load_errors(tmp_path, damage, message):
    out = tmp_path / "run"
    if damage != "missing":
        write_run(out, VIDEO_A, video_rows(("a", "ok")))
    if damage == "no_videos_dir":
        for f in (out / "videos").iterdir():
            f.unlink()
        (out / "videos").rmdir()
    elif damage == "no_parquet":
        (out / "videos" / "a.parquet").unlink()
    elif damage == "not_parquet":
        (out / "faces" / "a.parquet").write_text("not parquet")
    elif damage == "missing_column":
        pq.write_table(table(VIDEO_A).drop(["p_neutral"]), out / "faces" / "a.parquet")
    elif damage == "wrong_type":
        t = table(VIDEO_A)
        t = t.set_column(t.schema.get_field_index("timestamp_s"), "timestamp_s", t["timestamp_s"].cast(pa.string()))
        pq.write_table(t, out / "faces" / "a.parquet")
    elif damage == "empty_run":
        pq.write_table(VIDEOS_SCHEMA.empty_table(), out / "videos" / "a.parquet")
    with pytest.raises(TimelineError, match=message):
        load_timelines(out)


# --------------------------------------------------------------------------------------------------
# smooth_tracks


def test_rolling_window_is_in_seconds_not_rows():
    # Track 0 sampled at 10 fps, track 1 at 1 fps, both alternating happy / sad.
    rows = [face_row("v", i, i * 0.1, 0, 0, "happy" if i % 2 == 0 else "sad") for i in range(10)]
    rows += [face_row("w", i, float(i), 0, 0, "happy" if i % 2 == 0 else "sad") for i in range(5)]
    faces = frame(rows)
    smooth = smooth_tracks(faces, window_s=0.25)
    fast = smooth[smooth.video_id == "v"]
    # A centred 0.25 s window at 10 fps holds the row and one on each side (inside: the middle one counts).
    raw = faces[faces.video_id == "v"].p_happy.to_numpy()
    np.testing.assert_allclose(fast.p_happy.iloc[5], raw[4:7].mean(), rtol=1e-6)
    np.testing.assert_allclose(fast.p_happy.iloc[0], raw[0:2].mean(), rtol=1e-6)
    # At 1 fps the same window holds only the row itself: nothing changes.
    slow = smooth[smooth.video_id == "w"]
    np.testing.assert_allclose(slow[list(PROB_COLUMNS)], faces[faces.video_id == "w"][list(PROB_COLUMNS)])


def test_smoothing_keeps_tracks_apart_recomputes_labels_and_skips_blank_rows():
    rows = [face_row("v", i, i * 0.2, 0, 0, "happy") for i in range(10)]
    rows[4] = face_row("v", 4, 0.8, 0, 0, "sad")  # a one-frame blip
    rows += [face_row("v", i, i * 0.2, 1, 1, "angry", box=(200, 0, 40, 40)) for i in range(10)]
    rows += [blank_row("v", 10, 2.0)]
    faces = frame(rows)
    smooth = smooth_tracks(faces, window_s=1.0)
    assert list(smooth.index) == list(faces.index)
    track0 = smooth[smooth.track_id == 0]
    assert (track0.emotion == "happy").all()
    assert (smooth[smooth.track_id == 1].emotion == "angry").all()  # track 0's sadness does not leak in
    np.testing.assert_allclose(smooth.dropna(subset=["face_index"])[list(PROB_COLUMNS)].sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(track0.confidence, track0[list(PROB_COLUMNS)].max(axis=1), rtol=1e-6)
    assert track0.p_sad.iloc[4] < faces.p_sad.iloc[4]
    blank = smooth[smooth.face_index.isna()]
    assert len(blank) == 1 and blank[list(PROB_COLUMNS)].isna().all(axis=None)
    # The input is not modified; window 0 changes nothing.
    assert faces.emotion.iloc[4] == "sad"
    pd.testing.assert_frame_equal(smooth_tracks(faces, window_s=0), faces)


def test_ewm_half_life_in_seconds():
    rows = [face_row("v", 0, 0.0, 0, 0, "happy", p=1.0), face_row("v", 30, 1.0, 0, 0, "sad", p=1.0)]
    smooth = smooth_tracks(frame(rows), window_s=1.0, method="ewm")
    # The older row, one half-life back, weighs 1/2: p_happy = 0.5 / 1.5.
    assert smooth.p_happy.iloc[0] == pytest.approx(1.0)
    assert smooth.p_happy.iloc[1] == pytest.approx(1 / 3, rel=1e-5)
    assert smooth.emotion.iloc[1] == "sad"


@pytest.mark.parametrize("kwargs", [{"method": "median"}, {"window_s": -1.0}, {"window_s": math.inf}])
def test_smoothing_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        smooth_tracks(frame(VIDEO_A), **kwargs)


# --------------------------------------------------------------------------------------------------
# Summaries


def test_frame_durations_use_time_to_next_sampled_frame():
    rows = [face_row("v", 0, 0.0, 0, 0, "happy"), face_row("v", 0, 0.0, 1, 1, "sad"),
            blank_row("v", 3, 0.1), face_row("v", 33, 1.1, 0, 0, "happy"), face_row("s", 0, 0.0, 0, 0, "sad")]
    durations = frame_durations(frame(rows)).tolist()
    assert durations == pytest.approx([0.1, 0.1, 1.0, 0.55, 1.0])


def test_video_summary():
    faces = frame(VIDEO_A)
    videos = pd.DataFrame(video_rows(("a", "ok"), ("c", "failed")))
    summary = video_summary(faces, videos).set_index("video_id")
    a = summary.loc["a"]
    assert (a.frames_sampled, a.faces, a.tracks) == (10, 8, 2)
    assert a.face_frame_share == pytest.approx(0.6)
    assert a.face_time_s == pytest.approx(4.0)  # 8 faces x 0.5 s
    assert a.share_happy == pytest.approx(0.75) and a.share_sad == pytest.approx(0.25)
    assert a.dominant_emotion == "happy"
    c = summary.loc["c"]
    assert c.status == "failed" and c.frames_sampled == 0 and c.faces == 0 and c.dominant_emotion is None
    assert np.isnan(c.share_happy)
    assert set(SHARE_COLUMNS) <= set(summary.columns)


def test_video_summary_weighs_faces_by_time():
    # Variable sampling: the sad face lasts 1 s, the two happy ones 0.1 s each.
    rows = [face_row("v", 0, 0.0, 0, 0, "happy"), face_row("v", 3, 0.1, 0, 0, "happy"),
            face_row("v", 6, 0.2, 0, 0, "sad"), blank_row("v", 36, 1.2)]
    summary = video_summary(frame(rows), pd.DataFrame(video_rows(("v", "ok"))))
    assert summary.loc[0, "dominant_emotion"] == "sad"
    assert summary.loc[0, "share_sad"] == pytest.approx(1.0 / 1.2)


def test_track_summary():
    tracks = track_summary(frame(VIDEO_A)).set_index("track_id")
    assert list(tracks.index) == [0, 1]
    t0, t1 = tracks.loc[0], tracks.loc[1]
    assert (t0.start_s, t0.end_s, t0.frames, t0.duration_s) == (0.0, 2.5, 6, pytest.approx(3.0))
    assert (t1.start_s, t1.end_s, t1.frames, t1.duration_s) == (1.0, 1.5, 2, pytest.approx(1.0))
    assert t0.dominant_emotion == "happy" and t0.share_happy == 1.0
    assert t1.dominant_emotion == "sad" and t1.mean_p_sad == pytest.approx(0.7)
    assert sum(t0[c] for c in MEAN_PROB_COLUMNS) == pytest.approx(1.0)
    assert track_summary(frame([blank_row("v", 0, 0.0)])).empty


def test_emotion_windows():
    rows = VIDEO_A + [blank_row("a", 300, 10.0)]  # a gap: no sampled frame between 4.5 s and 10 s
    windows = emotion_windows(frame(rows), window_s=2.0)
    assert windows.window_index.tolist() == [0, 1, 2, 3, 4, 5]
    assert windows.start_s.tolist() == [0, 2, 4, 6, 8, 10]
    assert windows.frames_sampled.tolist() == [4, 4, 2, 0, 0, 1]
    np.testing.assert_allclose(windows.face_frame_share, [1.0, 0.5, 0.0, np.nan, np.nan, 0.0])
    assert windows.faces.tolist() == [6, 2, 0, 0, 0, 0]
    assert windows.dominant_emotion.tolist() == ["happy", "happy", None, None, None, None]
    assert windows.dominant_share.iloc[0] == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        emotion_windows(frame(rows), window_s=0)


# --------------------------------------------------------------------------------------------------
# On the real job's output


@pytest.mark.slow
def test_on_real_job_output(ray_local, tmp_path_factory, videos_dir, yunet_model, tiny_checkpoint):
    from tools_support import CLIPS, job_output

    faces, videos = load_timelines(job_output(tmp_path_factory, videos_dir, yunet_model, tiny_checkpoint))
    assert len(videos) == len(CLIPS) + 1 and (videos.status == "failed").sum() == 1
    summary = video_summary(smooth_tracks(faces), videos).set_index(videos.video_path.map(lambda p: Path(p).name).to_numpy())
    by_table = videos.set_index(videos.video_path.map(lambda p: Path(p).name).to_numpy())
    for name in CLIPS:
        assert summary.loc[name, "frames_sampled"] == by_table.loc[name, "frames_sampled"]
        assert summary.loc[name, "faces"] == by_table.loc[name, "faces"]
    assert summary.loc["posed_happy.mp4", "face_frame_share"] == 1.0
    assert 0.2 < summary.loc["pyfeat_face_noface.mov", "face_frame_share"] < 0.7
    assert summary.loc["broken.mp4", "status"] == "failed"
    shares = summary.loc[list(CLIPS), list(SHARE_COLUMNS)].sum(axis=1)
    np.testing.assert_allclose(shares, 1.0)
    tracks = track_summary(faces)
    assert (tracks.end_s >= tracks.start_s).all() and tracks.frames.sum() == summary.faces.sum()
    windows = emotion_windows(faces, window_s=2.0)
    noface = windows[windows.video_path.str.endswith("pyfeat_face_noface.mov")]
    assert noface.face_frame_share.iloc[0] > 0.5 and noface.face_frame_share.iloc[-1] == 0.0
