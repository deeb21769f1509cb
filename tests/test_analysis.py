"""fer_core.analysis on tiny synthetic timelines of the real schema (the usable-face rule and the episodes with
exact expected values), and once on the real job's output."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fer_core.analysis import (
    DEFAULT_MIN_SHARPNESS,
    EPISODE_COLUMNS,
    MEAN_PROB_COLUMNS,
    SHARE_COLUMNS,
    TimelineError,
    UsableRule,
    emotion_episodes,
    emotion_windows,
    frame_durations,
    load_timelines,
    smooth_tracks,
    track_summary,
    usable_faces,
    video_summary,
)
from fer_core.labels import EMOTIONS, PROB_COLUMNS
from fer_core.measures import MEASURE_COLUMNS
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
# The usable-face rule


def measured(row: dict, yaw: float | None = 0.0, sharpness: float | None = 100.0, in_frame: float | None = 1.0) -> dict:
    """A face row with the pose and quality measures the rule reads (None = null, as without landmarks)."""
    return {**row, "yaw_deg": yaw, "sharpness": sharpness, "in_frame": in_frame, "roll_deg": 0.0,
            "pitch_deg": 0.0, "brightness": 120.0, "iod_px": 0.4 * row["w"]}


def old_frame(rows: list[dict]) -> pd.DataFrame:
    """A faces table written before the landmark, pose and quality columns existed."""
    return table(rows).drop(list(MEASURE_COLUMNS)).to_pandas()


# One row per case, each on a frame of its own (video "q", 5 fps), and what the default rule says.
RULE_CASES = [
    (measured(face_row("q", 0, 0.0, 0, 0, "happy")), True),                        # frontal, sharp, big, inside
    (measured(face_row("q", 1, 0.2, 0, 0, "happy"), yaw=55.0), False),             # turned away
    (measured(face_row("q", 2, 0.4, 0, 0, "happy"), yaw=-41.0), False),            # turned the other way
    (measured(face_row("q", 3, 0.6, 0, 0, "happy"), yaw=-40.0), True),             # on the limit: kept
    (measured(face_row("q", 4, 0.8, 0, 0, "happy"), sharpness=5.0), False),        # blurred
    (measured(face_row("q", 5, 1.0, 0, 0, "happy"), sharpness=DEFAULT_MIN_SHARPNESS), True),
    (measured(face_row("q", 6, 1.2, 0, 0, "happy", box=(0, 0, 60, 30))), False),   # too small: min(w, h) = 30
    (measured(face_row("q", 7, 1.4, 0, 0, "happy"), in_frame=0.5), False),         # half outside the frame
    (measured(face_row("q", 8, 1.6, 0, 0, "happy"), yaw=None), True),              # no landmarks (Haar): unknown
    (blank_row("q", 9, 1.8), False),                                               # no face: not usable, not dropped
]


def test_usable_faces_default_rule():
    faces = frame([row for row, _ in RULE_CASES])
    usable = usable_faces(faces)
    assert usable.dtype == bool and list(usable.index) == list(faces.index)
    assert usable.tolist() == [expected for _, expected in RULE_CASES]
    # Unknown measures dropped instead: the Haar face goes too, the blank row is still no face.
    strict = usable_faces(faces, UsableRule(keep_unknown=False)).tolist()
    assert strict == [expected for _, expected in RULE_CASES[:8]] + [False, False]


def test_usable_rule_checks_can_be_switched_off():
    faces = frame([row for row, _ in RULE_CASES])
    rule = UsableRule(max_abs_yaw_deg=None, min_sharpness=None, min_in_frame=None)
    assert rule.columns == ("w", "h")
    assert usable_faces(faces, rule).tolist() == [True] * 6 + [False, True, True, False]
    everything = UsableRule(max_abs_yaw_deg=None, min_sharpness=None, min_face_px=None, min_in_frame=None)
    assert usable_faces(faces, everything).tolist() == [True] * 9 + [False]
    assert everything.describe() == "no checks"
    assert UsableRule().describe() == (
        "|yaw| <= 40 deg, sharpness >= 40, min(w, h) >= 40 px, in frame >= 90%; unknown measures kept")
    assert UsableRule().columns == ("yaw_deg", "sharpness", "w", "h", "in_frame")


@pytest.mark.parametrize("kwargs, message", [
    ({"max_abs_yaw_deg": -1.0}, "max_abs_yaw_deg must be a finite number >= 0"),
    ({"min_sharpness": math.nan}, "min_sharpness must be a finite number >= 0"),
    ({"min_face_px": "40"}, "min_face_px must be a finite number >= 0"),
    ({"min_in_frame": 1.5}, r"min_in_frame must be a finite number >= 0 and <= 1"),
    ({"min_sharpness": math.inf}, "min_sharpness must be a finite number"),
    ({"keep_unknown": "yes"}, "keep_unknown must be True or False"),
])
def test_usable_rule_rejects_bad_thresholds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UsableRule(**kwargs)


def test_usable_rule_on_timelines_without_the_quality_columns():
    faces = old_frame(VIDEO_A)
    with pytest.raises(TimelineError, match="needs the faces columns yaw_deg, sharpness, in_frame") as info:
        usable_faces(faces)
    assert "re-run jobs/annotate.py with --overwrite" in str(info.value) and "\n" not in str(info.value)
    videos = pd.DataFrame(video_rows(("a", "ok")))
    for call in (lambda: video_summary(faces, videos, usable=UsableRule()),
                 lambda: track_summary(faces, usable=UsableRule()),
                 lambda: emotion_windows(faces, usable=UsableRule()),
                 lambda: emotion_windows(faces.iloc[:0], usable=UsableRule()),
                 lambda: smooth_tracks(faces, usable=UsableRule()),
                 lambda: emotion_episodes(faces, usable=UsableRule())):
        with pytest.raises(TimelineError, match="needs the faces columns"):
            call()
    # A rule that reads only the box works on them; without a rule nothing changes.
    assert usable_faces(faces, UsableRule(max_abs_yaw_deg=None, min_sharpness=None, min_in_frame=None)).sum() == 8
    assert video_summary(faces, videos).loc[0, "faces"] == 8


# Video "u", 4 frames at 2 fps: frame 0 a usable face (track 0, happy), frame 1 only a face dropped for yaw
# (track 0), frame 2 a usable face (track 0) and a blurred one (track 1, sad, dropped), frame 3 no face.
VIDEO_U = [
    measured(face_row("u", 0, 0.0, 0, 0, "happy")),
    measured(face_row("u", 15, 0.5, 0, 0, "sad"), yaw=60.0),
    measured(face_row("u", 30, 1.0, 0, 0, "happy")),
    measured(face_row("u", 30, 1.0, 1, 1, "sad", box=(100, 10, 40, 40)), sharpness=2.0),
    blank_row("u", 45, 1.5),
]


def test_video_summary_with_usable_rule():
    faces = frame(VIDEO_U)
    videos = pd.DataFrame(video_rows(("u", "ok"), ("c", "failed")))
    everything = video_summary(faces, videos)
    assert "faces_dropped" not in everything.columns  # no rule: today's table
    assert (everything.loc[0, "faces"], everything.loc[0, "face_frame_share"]) == (4, 0.75)
    summary = video_summary(faces, videos, usable=UsableRule()).set_index("video_id")
    u = summary.loc["u"]
    # Every sampled frame still counts; frame 1 now is a frame without a (usable) face.
    assert (u.frames_sampled, u.faces, u.faces_dropped, u.tracks) == (4, 2, 2, 1)
    assert u.face_frame_share == pytest.approx(0.5)
    assert u.face_time_s == pytest.approx(1.0)
    assert u.share_happy == 1.0 and u.dominant_emotion == "happy"
    assert summary.loc["c", "faces_dropped"] == 0 and summary.loc["c", "faces"] == 0
    assert list(summary.columns).index("faces_dropped") == list(summary.columns).index("faces") + 1


def test_track_summary_with_usable_rule():
    tracks = track_summary(frame(VIDEO_U), usable=UsableRule())
    # Track 1's only face was dropped: it has no usable frame and is left out.
    assert tracks.track_id.tolist() == [0]
    t0 = tracks.iloc[0]
    assert (t0.start_s, t0.end_s, t0.frames, t0.frames_dropped, t0.duration_s) == (0.0, 1.0, 2, 1, 1.0)
    assert t0.mean_p_happy == pytest.approx(0.7)
    assert "frames_dropped" not in track_summary(frame(VIDEO_U)).columns


def test_emotion_windows_with_usable_rule():
    windows = emotion_windows(frame(VIDEO_U), window_s=1.0, usable=UsableRule())
    assert windows.frames_sampled.tolist() == [2, 2]
    assert windows.faces.tolist() == [1, 1] and windows.faces_dropped.tolist() == [1, 1]
    assert windows.face_frame_share.tolist() == [0.5, 0.5]
    assert windows.dominant_emotion.tolist() == ["happy", "happy"]
    assert "faces_dropped" not in emotion_windows(frame(VIDEO_U), window_s=1.0).columns


def test_smoothing_with_usable_rule_leaves_dropped_faces_out():
    faces = frame(VIDEO_U)
    smooth = smooth_tracks(faces, window_s=2.0, usable=UsableRule())
    # Track 0's usable faces at 0 s and 1 s are both happy: the dropped sad face at 0.5 s does not leak in...
    assert smooth.p_happy.iloc[0] == pytest.approx(0.7) and smooth.p_sad.iloc[2] == pytest.approx(0.05)
    # ...and keeps its raw values.
    assert smooth.p_sad.iloc[1] == pytest.approx(0.7) and smooth.emotion.iloc[1] == "sad"
    assert smooth_tracks(faces, window_s=2.0).p_happy.iloc[0] < 0.7  # without the rule it does


def test_load_timelines_written_before_the_quality_columns(tmp_path):
    out = write_run(tmp_path / "run", VIDEO_A, video_rows(("a", "ok"), ("u", "ok")))
    pq.write_table(table(VIDEO_A).drop(list(MEASURE_COLUMNS)), out / "faces" / "a.parquet")
    faces, _ = load_timelines(out)
    assert not set(MEASURE_COLUMNS) & set(faces.columns) and len(faces) == len(VIDEO_A)
    with pytest.raises(TimelineError, match="re-run jobs/annotate.py"):
        usable_faces(faces)
    # A run mixing older and newer files: the older rows' measures are null (unknown, kept by the default rule).
    pq.write_table(table(VIDEO_U), out / "faces" / "u.parquet")
    faces, _ = load_timelines(out)
    assert list(faces.columns) == FACES_SCHEMA.names
    assert faces.loc[faces.video_id == "a", "yaw_deg"].isna().all()
    assert faces.loc[faces.video_id == "u", "sharpness"].notna().sum() == 4
    assert usable_faces(faces).sum() == 8 + 2


# --------------------------------------------------------------------------------------------------
# Episodes


def fps5(vid: str, start: int, emotions: str | list[str], track: int = 0, p: float = 0.7) -> list[dict]:
    """Face rows of one track at 5 fps from frame `start`, one per emotion given (a string: one frame)."""
    emotions = [emotions] if isinstance(emotions, str) else emotions
    return [face_row(vid, start + i, round((start + i) * 0.2, 6), track, track, e, p=p,
                     box=(10 + 100 * track, 10, 40, 40)) for i, e in enumerate(emotions)]


def episodes_list(episodes: pd.DataFrame) -> list[tuple]:
    return [(r.track_id, r.emotion, round(r.start_s, 6), round(r.end_s, 6), round(r.duration_s, 6), r.frames)
            for r in episodes.itertuples()]


def test_episodes_of_a_track_that_switches_emotion():
    faces = frame(fps5("v", 0, ["happy"] * 15 + ["sad"] * 15))
    episodes = emotion_episodes(faces, min_duration_s=2.0)
    assert list(episodes.columns) == list(EPISODE_COLUMNS)
    # The two stretches meet at 3.0 s; the last frame stands for the median interval, 0.2 s.
    assert episodes_list(episodes) == [(0, "happy", 0.0, 3.0, 3.0, 15), (0, "sad", 3.0, 6.0, 3.0, 15)]
    assert episodes.mean_p.tolist() == pytest.approx([0.7, 0.7])
    assert episodes.video_path.tolist() == ["/v/v.mp4"] * 2 and episodes.track_id.dtype == np.int64
    assert episodes_list(emotion_episodes(faces, min_duration_s=3.5)) == []


def test_a_blip_shorter_than_min_duration_is_no_episode():
    # Happy 2.0 s, one sad frame (0.2 s), happy 2.0 s.
    faces = frame(fps5("v", 0, ["happy"] * 10 + ["sad"] + ["happy"] * 10))
    assert episodes_list(emotion_episodes(faces, min_duration_s=2.0)) == [
        (0, "happy", 0.0, 2.0, 2.0, 10), (0, "happy", 2.2, 4.2, 2.0, 10)]  # exactly 2.0 s counts
    assert episodes_list(emotion_episodes(faces, min_duration_s=0.2))[1] == (0, "sad", 2.0, 2.2, 0.2, 1)
    # Smoothed over 1 s first, the blip is gone: one stretch.
    smoothed = emotion_episodes(faces, min_duration_s=2.0, smooth_s=1.0)
    assert episodes_list(smoothed) == [(0, "happy", 0.0, 4.2, 4.2, 21)]
    assert episodes_list(emotion_episodes(smooth_tracks(faces, window_s=1.0))) == episodes_list(smoothed)
    # Its mean: the 5-row window around the blip holds 0.57 happy (rows near the ends hold fewer rows).
    assert 0.6 < smoothed.mean_p.iloc[0] < 0.7


def test_a_gap_splits_an_episode():
    # Happy 0-2.0 s, the face gone for 1.2 s (frames without a face), happy again 3.2-5.2 s.
    rows = fps5("v", 0, ["happy"] * 10) + [blank_row("v", i, i * 0.2) for i in range(10, 16)]
    rows += fps5("v", 16, ["happy"] * 10)
    faces = frame(rows)
    assert episodes_list(emotion_episodes(faces)) == [(0, "happy", 0.0, 2.0, 2.0, 10), (0, "happy", 3.2, 5.2, 2.0, 10)]
    # A gap of at most max_gap_s is bridged, and its time is part of the episode.
    assert episodes_list(emotion_episodes(faces, max_gap_s=1.2)) == [(0, "happy", 0.0, 5.2, 5.2, 20)]
    assert episodes_list(emotion_episodes(faces, max_gap_s=math.inf)) == [(0, "happy", 0.0, 5.2, 5.2, 20)]


def test_episodes_keep_tracks_and_videos_apart():
    rows = fps5("v", 0, ["happy"] * 12) + fps5("v", 0, ["angry"] * 6 + ["fear"] * 12, track=1)
    rows += fps5("w", 0, ["neutral"] * 11)
    episodes = emotion_episodes(frame(rows))
    assert [(r.video_id, *t) for r, t in zip(episodes.itertuples(), episodes_list(episodes))] == [
        ("v", 0, "happy", 0.0, 2.4, 2.4, 12),
        ("v", 1, "fear", 1.2, 3.6, 2.4, 12),
        ("w", 0, "neutral", 0.0, 2.2, 2.2, 11),
    ]


def test_episode_mean_probability_is_time_weighted():
    # Sampled at 0, 1.0 and 1.2 s: the frames stand for 1.0, 0.2 and (median interval) 0.6 s.
    rows = [face_row("v", 0, 0.0, 0, 0, "happy", p=0.9), face_row("v", 30, 1.0, 0, 0, "happy", p=0.6),
            face_row("v", 36, 1.2, 0, 0, "happy", p=0.6)]
    episodes = emotion_episodes(frame(rows), min_duration_s=1.0)
    assert episodes_list(episodes) == [(0, "happy", 0.0, 1.8, 1.8, 3)]
    assert episodes.mean_p.iloc[0] == pytest.approx((0.9 * 1.0 + 0.6 * 0.2 + 0.6 * 0.6) / 1.8, rel=1e-6)


def test_episodes_with_usable_rule_and_without_faces():
    # A happy track at 5 fps, its faces at 1.0-1.4 s turned away (dropped): a 0.6 s gap.
    rows = [measured(r, yaw=60.0 if 5 <= i <= 7 else 0.0) for i, r in enumerate(fps5("v", 0, ["happy"] * 20))]
    faces = frame(rows)
    assert episodes_list(emotion_episodes(faces, usable=UsableRule())) == [(0, "happy", 0.0, 4.0, 4.0, 17)]
    assert episodes_list(emotion_episodes(faces, max_gap_s=0.5, usable=UsableRule())) == [
        (0, "happy", 1.6, 4.0, 2.4, 12)]  # the first 1.0 s is too short on its own
    assert episodes_list(emotion_episodes(faces, max_gap_s=0.0)) == [(0, "happy", 0.0, 4.0, 4.0, 20)]
    empty = emotion_episodes(frame([blank_row("v", 0, 0.0), blank_row("v", 1, 0.2)]))
    assert empty.empty and list(empty.columns) == list(EPISODE_COLUMNS)
    assert emotion_episodes(frame([])).empty


@pytest.mark.parametrize("kwargs, message", [
    ({"min_duration_s": -1.0}, "min_duration_s must be a finite number of seconds >= 0, got -1.0"),
    ({"min_duration_s": math.nan}, "min_duration_s must be a finite number"),
    ({"min_duration_s": math.inf}, "min_duration_s must be a finite number"),
    ({"max_gap_s": -0.5}, "max_gap_s must be a number of seconds >= 0, got -0.5"),
    ({"max_gap_s": math.nan}, "max_gap_s must be a number of seconds >= 0"),
    ({"smooth_s": -1.0}, "smooth_s must be a finite number of seconds >= 0"),
    ({"min_duration_s": "2"}, "min_duration_s must be a finite number"),
])
def test_episodes_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        emotion_episodes(frame(VIDEO_A), **kwargs)


def test_episodes_name_missing_columns():
    with pytest.raises(TimelineError, match=r"emotion_episodes needs the faces columns emotion, p_happy, which"):
        emotion_episodes(frame(VIDEO_A).drop(columns=["emotion", "p_happy"]))


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
