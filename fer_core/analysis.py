"""Read a run's timelines back and summarise them with pandas: smoothed tracks, per-video, per-track and
per-window summaries. No Ray.

Time is always video time in seconds (``timestamp_s``), never rows: a clip sampled at 5 fps and one sampled at
every frame give the same summaries. Each sampled frame stands for the time until the next sampled frame of its
video (its *frame duration*; the last frame gets the video's median sampling interval, a one-frame video 1 s),
so "share of face-time" weighs faces by how long they were on screen, also for variable frame rates.

    faces, videos = load_timelines("timelines/")
    smooth = smooth_tracks(faces, window_s=1.0)
    video_summary(smooth, videos)
"""

from __future__ import annotations

import os
import posixpath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fer_core import storage
from fer_core.labels import EMOTIONS, PROB_COLUMNS
from fer_core.schema import FACES_SCHEMA, STATUS_OK, VIDEOS_SCHEMA

SHARE_COLUMNS: tuple[str, ...] = tuple(f"share_{name}" for name in EMOTIONS)
"""Share of face-time per class, in summaries (0..1, summing to 1 where there are faces)."""

MEAN_PROB_COLUMNS: tuple[str, ...] = tuple(f"mean_{name}" for name in PROB_COLUMNS)
"""Time-weighted mean probability per class, in :func:`track_summary`."""

SMOOTHING_METHODS: tuple[str, ...] = ("rolling", "ewm")


class TimelineError(ValueError):
    """A timelines folder is missing, holds no Parquet files, has the wrong schema, or records no video."""


# --------------------------------------------------------------------------------------------------
# Loading


def _parquet_files(fs: pafs.FileSystem, folder: str, shown: str) -> list[str]:
    info = fs.get_file_info(folder)
    if info.type == pafs.FileType.NotFound:
        raise TimelineError(f"{shown!r} does not exist; pass the --out folder of jobs/annotate.py")
    if info.type != pafs.FileType.Directory:
        raise TimelineError(f"{shown!r} is a file, not a folder; pass the --out folder of jobs/annotate.py")
    entries = fs.get_file_info(pafs.FileSelector(folder))
    return sorted(
        e.path for e in entries
        if e.type == pafs.FileType.File
        and e.path.endswith(".parquet")
        and not posixpath.basename(e.path).startswith((".", "_"))  # in-progress writes, Spark-style markers
    )


def _read_table(fs: pafs.FileSystem, files: list[str], schema: pa.Schema, shown: str) -> pa.Table:
    tables = []
    for path in files:
        name = f"{shown}/{posixpath.basename(path)}"
        try:
            table = pq.read_table(path, filesystem=fs)
        except (OSError, pa.ArrowException) as e:
            raise TimelineError(f"{name!r} is not a readable Parquet file ({' '.join(str(e).split())[:200]})") from e
        missing = [f.name for f in schema if f.name not in table.schema.names]
        wrong = [
            f"{f.name} is {table.schema.field(f.name).type}, expected {f.type}"
            for f in schema if f.name in table.schema.names and table.schema.field(f.name).type != f.type
        ]
        if missing or wrong:
            problem = f"missing columns {', '.join(missing)}" if missing else "; ".join(wrong)
            raise TimelineError(
                f"{name!r} does not have the schema of fer_core.schema ({problem}); "
                "was it written by jobs/annotate.py?"
            )
        tables.append(table.select(schema.names).cast(schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def load_timelines(out: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a run's two tables, from a local folder or a bucket URI (s3://, gs://; pyarrow filesystems).

    Args:
        out: The ``--out`` of ``jobs/annotate.py``, holding ``faces/`` and ``videos/``.

    Returns:
        ``(faces, videos)`` with the columns of :data:`fer_core.schema.FACES_SCHEMA` and
        :data:`fer_core.schema.VIDEOS_SCHEMA`, as ``pd.read_parquet`` gives them (integer face columns become
        float64 where frames without a face make them null). ``faces`` holds the rows of the videos whose
        ``videos`` row says ``ok`` (the job writes that row last), sorted by video, time and face index;
        ``videos`` is sorted by path. ``faces`` may be empty (every video failed); ``videos`` never is.

    Raises:
        TimelineError: the folder or one of its two subfolders is missing, ``videos/`` holds no Parquet file,
            a file is not Parquet or lacks a column of the schema, or the run recorded no video.
    """
    shown = str(out).rstrip("/")
    try:
        fs, root = storage.resolve(shown)
        if fs.get_file_info(root).type == pafs.FileType.NotFound:
            raise TimelineError(f"timelines folder {shown!r} does not exist; pass the --out folder of jobs/annotate.py")
        video_files = _parquet_files(fs, posixpath.join(root, "videos"), f"{shown}/videos")
        if not video_files:
            raise TimelineError(
                f"{shown + '/videos'!r} holds no Parquet files: no video has finished in this run yet "
                "(run jobs/annotate.py with this --out)"
            )
        face_files = _parquet_files(fs, posixpath.join(root, "faces"), f"{shown}/faces")
        videos = _read_table(fs, video_files, VIDEOS_SCHEMA, f"{shown}/videos")
        faces = _read_table(fs, face_files, FACES_SCHEMA, f"{shown}/faces")
    except (OSError, pa.ArrowException) as e:  # bucket credentials, network, permissions
        raise TimelineError(f"cannot read timelines at {shown!r}: {' '.join(str(e).split())[:300]}") from e
    if videos.num_rows == 0:
        raise TimelineError(f"the run at {shown!r} records no video: its videos/ files are empty")
    videos_df = videos.to_pandas()
    # A faces file counts only once its videos row says ok: an interrupted run may leave one without it.
    done = set(videos_df.loc[videos_df["status"] == STATUS_OK, "video_id"])
    faces_df = faces.to_pandas()
    faces_df = faces_df[faces_df["video_id"].isin(done)]
    faces_df = faces_df.sort_values(["video_path", "video_id", "timestamp_s", "face_index"], kind="stable",
                                    na_position="first").reset_index(drop=True)
    videos_df = videos_df.sort_values(["video_path", "video_id"], kind="stable").reset_index(drop=True)
    return faces_df, videos_df


# --------------------------------------------------------------------------------------------------
# Smoothing


def _face_rows(faces: pd.DataFrame) -> pd.Series:
    """Rows that hold a face (a frame without faces has one row with null face fields)."""
    return faces["face_index"].notna() & faces["track_id"].notna()


def _relabel(faces: pd.DataFrame, rows: pd.Index) -> None:
    probs = faces.loc[rows, list(PROB_COLUMNS)].to_numpy(np.float64)
    faces.loc[rows, "emotion"] = np.asarray(EMOTIONS, dtype=object)[probs.argmax(axis=1)]
    faces.loc[rows, "confidence"] = probs.max(axis=1).astype(np.float32)


def _rolling_centered(t: np.ndarray, values: np.ndarray, window_s: float) -> np.ndarray:
    """Mean of the rows whose time lies within ``window_s / 2`` of each row's time (``t`` sorted)."""
    lo = np.searchsorted(t, t - window_s / 2, side="left")
    hi = np.searchsorted(t, t + window_s / 2, side="right")
    cumsum = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    return (cumsum[hi] - cumsum[lo]) / (hi - lo)[:, None]


def _ewm_time(t: np.ndarray, values: np.ndarray, halflife_s: float) -> np.ndarray:
    times = pd.to_datetime(0) + pd.to_timedelta(t, unit="s")
    frame = pd.DataFrame(values)
    return frame.ewm(halflife=pd.Timedelta(seconds=halflife_s), times=times).mean().to_numpy()


def smooth_tracks(faces: pd.DataFrame, window_s: float = 1.0, method: str = "rolling") -> pd.DataFrame:
    """Smooth the seven probabilities of each face track over video time.

    Each ``(video_id, track_id)`` is smoothed on its own, in seconds of ``timestamp_s`` (not rows), then
    ``emotion`` and ``confidence`` are recomputed from the smoothed probabilities, which still sum to 1.

    Args:
        faces: The faces table (e.g. from :func:`load_timelines`); rows without a face are kept unchanged.
        window_s: ``"rolling"``: a centred window of this width (a row averages the track's rows within
            ``window_s / 2`` of it, before and after); ``"ewm"``: the half-life of a causal exponentially
            weighted mean over time (a row ``window_s`` seconds older weighs half as much). 0 = no smoothing.
        method: ``"rolling"`` (for offline analysis: no lag) or ``"ewm"`` (uses only the past, as live use would).

    Returns:
        A copy of ``faces`` in the same row order, with smoothed ``p_*``, ``emotion`` and ``confidence``.

    Raises:
        ValueError: for a negative ``window_s`` or an unknown ``method``.
    """
    if method not in SMOOTHING_METHODS:
        raise ValueError(f"unknown smoothing method {method!r}; expected one of {', '.join(SMOOTHING_METHODS)}")
    if not window_s >= 0 or not np.isfinite(window_s):
        raise ValueError(f"window_s must be a finite number of seconds >= 0, got {window_s!r}")
    out = faces.copy()
    rows = out.index[_face_rows(out)]
    if window_s == 0 or len(rows) == 0:
        return out
    tracked = out.loc[rows, ["video_id", "track_id", "timestamp_s", *PROB_COLUMNS]]
    tracked = tracked.sort_values(["video_id", "track_id", "timestamp_s"], kind="stable")
    smoothed = np.empty((len(tracked), len(PROB_COLUMNS)))
    probs = tracked[list(PROB_COLUMNS)].to_numpy(np.float64)
    times = tracked["timestamp_s"].to_numpy(np.float64)
    for positions in tracked.groupby(["video_id", "track_id"], sort=False).indices.values():
        if method == "rolling":
            smoothed[positions] = _rolling_centered(times[positions], probs[positions], window_s)
        else:
            smoothed[positions] = _ewm_time(times[positions], probs[positions], window_s)
    smoothed /= smoothed.sum(axis=1, keepdims=True)
    out.loc[tracked.index, list(PROB_COLUMNS)] = smoothed.astype(np.float32)
    _relabel(out, tracked.index)
    return out


# --------------------------------------------------------------------------------------------------
# Summaries


def frame_durations(faces: pd.DataFrame) -> pd.Series:
    """Seconds each row's sampled frame stands for: the time until the video's next sampled frame.

    The last frame of a video gets the video's median interval between sampled frames (1 s for a video with
    a single sampled frame, e.g. a still image).

    Returns:
        float64, aligned with ``faces``.
    """
    frames = faces[["video_id", "timestamp_s"]].drop_duplicates().sort_values(["video_id", "timestamp_s"])
    following = frames.groupby("video_id")["timestamp_s"].shift(-1)
    step = (following - frames["timestamp_s"]).clip(lower=0)
    median = step.groupby(frames["video_id"]).transform("median").fillna(1.0)
    frames = frames.assign(frame_duration_s=step.fillna(median).to_numpy())
    merged = faces[["video_id", "timestamp_s"]].merge(frames, on=["video_id", "timestamp_s"], how="left")
    return pd.Series(merged["frame_duration_s"].to_numpy(), index=faces.index, name="frame_duration_s")


def _emotion_shares(face_rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``share_*`` columns and ``dominant_emotion`` per group of ``keys``, weighted by ``frame_duration_s``."""
    if face_rows.empty:
        empty = pd.DataFrame(columns=[*keys, *SHARE_COLUMNS, "dominant_emotion"])
        return empty.astype({c: np.float64 for c in SHARE_COLUMNS}).set_index(keys)
    weights = face_rows.groupby([*keys, "emotion"])["frame_duration_s"].sum().unstack("emotion", fill_value=0.0)
    weights = weights.reindex(columns=list(EMOTIONS), fill_value=0.0)
    total = weights.sum(axis=1)
    shares = weights.div(total.where(total > 0), axis=0)
    # With no measurable time (one frame), count rows instead.
    if (total <= 0).any():
        counts = face_rows.groupby([*keys, "emotion"]).size().unstack("emotion", fill_value=0)
        counts = counts.reindex(index=shares.index, columns=list(EMOTIONS), fill_value=0)
        shares = shares.fillna(counts.div(counts.sum(axis=1), axis=0))
    shares.columns = list(SHARE_COLUMNS)
    shares["dominant_emotion"] = pd.Series(
        np.asarray(EMOTIONS, dtype=object)[shares[list(SHARE_COLUMNS)].to_numpy().argmax(axis=1)], index=shares.index
    )
    return shares


def video_summary(faces: pd.DataFrame, videos: pd.DataFrame) -> pd.DataFrame:
    """One row per video of the run (failed videos included, with empty counts).

    Columns:
        video_id, video_path, status, error: from the videos table.
        duration_s: the video's duration from the container, seconds.
        frames_sampled: sampled frames in ``faces`` (0 for a failed video).
        face_frame_share: share of sampled frames with at least one face (NaN without sampled frames).
        faces: face rows (one per face per sampled frame).
        tracks: distinct face tracks.
        face_time_s: seconds of face presence summed over faces (two faces for 1 s count 2 s).
        share_angry … share_neutral: share of face-time each emotion is the most probable class (sums to 1;
            NaN without faces).
        dominant_emotion: the emotion with the largest share (None without faces).
    """
    faces = faces.assign(frame_duration_s=frame_durations(faces))
    is_face = _face_rows(faces)
    frame_has_face = is_face.groupby([faces["video_id"], faces["frame_index"]]).any()
    per_video = frame_has_face.groupby(level="video_id").agg(frames_sampled="size", face_frame_share="mean")
    face_rows = faces[is_face]
    counts = face_rows.groupby("video_id").agg(
        faces=("video_id", "size"), tracks=("track_id", "nunique"), face_time_s=("frame_duration_s", "sum")
    )
    shares = _emotion_shares(face_rows, ["video_id"])
    table = videos[["video_id", "video_path", "status", "error", "duration_s"]].set_index("video_id")
    table = table.join(per_video).join(counts).join(shares)
    for column in ("frames_sampled", "faces", "tracks"):
        table[column] = table[column].fillna(0).astype(np.int64)
    table["face_time_s"] = table["face_time_s"].fillna(0.0)
    table["dominant_emotion"] = table["dominant_emotion"].astype(object).where(table["faces"] > 0, None)
    columns = ["video_path", "status", "error", "duration_s", "frames_sampled", "face_frame_share", "faces",
               "tracks", "face_time_s", *SHARE_COLUMNS, "dominant_emotion"]
    return table[columns].reset_index()


def track_summary(faces: pd.DataFrame) -> pd.DataFrame:
    """One row per face track, ordered by video and start time.

    Columns:
        video_id, video_path, track_id.
        start_s, end_s: times of the track's first and last sampled frame.
        duration_s: face-time of the track (its frames' durations summed; at least one sampling interval).
        frames: sampled frames the track appears in.
        mean_p_angry … mean_p_neutral: time-weighted mean probabilities.
        share_angry … share_neutral: share of the track's time each emotion is the most probable class.
        dominant_emotion: the emotion with the largest share of the track's time.
    """
    faces = faces.assign(frame_duration_s=frame_durations(faces))
    rows = faces[_face_rows(faces)].copy()
    keys = ["video_id", "track_id"]
    columns = ["video_id", "video_path", "track_id", "start_s", "end_s", "duration_s", "frames",
               *MEAN_PROB_COLUMNS, *SHARE_COLUMNS, "dominant_emotion"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows["track_id"] = rows["track_id"].astype(np.int64)
    weighted = rows[list(PROB_COLUMNS)].astype(np.float64).mul(rows["frame_duration_s"], axis=0)
    weighted[keys] = rows[keys]
    sums = weighted.groupby(keys).sum()
    basic = rows.groupby(keys).agg(
        video_path=("video_path", "first"), start_s=("timestamp_s", "min"), end_s=("timestamp_s", "max"),
        duration_s=("frame_duration_s", "sum"), frames=("frame_index", "nunique"),
    )
    means = sums.div(basic["duration_s"].where(basic["duration_s"] > 0), axis=0)
    means = means.fillna(rows.groupby(keys)[list(PROB_COLUMNS)].mean())
    means.columns = list(MEAN_PROB_COLUMNS)
    table = basic.join(means).join(_emotion_shares(rows, keys)).reset_index()
    table = table.sort_values(["video_path", "video_id", "start_s", "track_id"], kind="stable")
    return table[columns].reset_index(drop=True)


def emotion_windows(faces: pd.DataFrame, window_s: float = 5.0) -> pd.DataFrame:
    """The dominant emotion and face presence per fixed time window of each video.

    Windows are ``[k * window_s, (k + 1) * window_s)`` from 0 to the video's last sampled frame; every window
    is listed, also one that holds no sampled frame.

    Columns:
        video_id, video_path, window_index, start_s, end_s.
        frames_sampled: sampled frames in the window.
        face_frame_share: share of them with at least one face (NaN without sampled frames).
        faces: face rows in the window.
        share_angry … share_neutral: share of the window's face-time per emotion (NaN without faces).
        dominant_emotion: the emotion with the largest share (None without faces).
        dominant_share: its share.

    Raises:
        ValueError: if ``window_s`` is not a positive number.
    """
    if not window_s > 0 or not np.isfinite(window_s):
        raise ValueError(f"window_s must be a finite number of seconds > 0, got {window_s!r}")
    columns = ["video_id", "video_path", "window_index", "start_s", "end_s", "frames_sampled", "face_frame_share",
               "faces", *SHARE_COLUMNS, "dominant_emotion", "dominant_share"]
    if faces.empty:
        return pd.DataFrame(columns=columns)
    faces = faces.assign(
        frame_duration_s=frame_durations(faces),
        window_index=np.floor(faces["timestamp_s"].clip(lower=0) / window_s).astype(np.int64),
    )
    is_face = _face_rows(faces)
    keys = ["video_id", "window_index"]
    frame_has_face = is_face.groupby([faces["video_id"], faces["window_index"], faces["frame_index"]]).any()
    presence = frame_has_face.groupby(level=keys).agg(frames_sampled="size", face_frame_share="mean")
    face_counts = is_face.groupby([faces["video_id"], faces["window_index"]]).sum().rename("faces")
    shares = _emotion_shares(faces[is_face], keys)
    last = faces.groupby("video_id").agg(video_path=("video_path", "first"), last=("window_index", "max"))
    grid = pd.MultiIndex.from_tuples(
        [(vid, k) for vid, n in last["last"].items() for k in range(int(n) + 1)], names=keys
    )
    table = pd.DataFrame(index=grid).join(presence).join(face_counts).join(shares).reset_index()
    table["video_path"] = table["video_id"].map(last["video_path"])
    table["start_s"] = table["window_index"] * window_s
    table["end_s"] = table["start_s"] + window_s
    table["frames_sampled"] = table["frames_sampled"].fillna(0).astype(np.int64)
    table["faces"] = table["faces"].fillna(0).astype(np.int64)
    table["dominant_emotion"] = table["dominant_emotion"].astype(object).where(table["faces"] > 0, None)
    share_values = table[list(SHARE_COLUMNS)].to_numpy(np.float64)
    table["dominant_share"] = np.where(table["faces"] > 0, np.nanmax(np.nan_to_num(share_values, nan=0.0), axis=1), np.nan)
    table = table.sort_values(["video_path", "video_id", "window_index"], kind="stable")
    return table[columns].reset_index(drop=True)


def match_video(videos: pd.DataFrame, path: str | os.PathLike) -> tuple[pd.Series, str]:
    """Find a video file's row in a run's videos table.

    A file matches by :func:`fer_core.video.video_id` of its path (the same file the job read), else by file
    name alone (the timelines were made from a copy elsewhere, or on a cluster).

    Returns:
        ``(row, how)`` with ``how`` = ``"id"`` or ``"name"``.

    Raises:
        TimelineError: no video matches, or several match by name; the message lists what the run holds.
    """
    from fer_core.video import video_id

    path = os.fspath(path)
    by_id = videos[videos["video_id"] == video_id(path)]
    if len(by_id):
        return by_id.iloc[0], "id"
    name = posixpath.basename(path.replace(os.sep, "/").rstrip("/"))
    names = videos["video_path"].map(lambda p: posixpath.basename(str(p).replace(os.sep, "/").rstrip("/")))
    by_name = videos[names == name]
    if len(by_name) == 1:
        return by_name.iloc[0], "name"
    if len(by_name) > 1:
        raise TimelineError(
            f"{len(by_name)} videos of the run are named {name!r} ({', '.join(by_name['video_path'].head(3))}); "
            "pass the path the job was given, so it matches by video id"
        )
    listed = ", ".join(sorted(names.head(5)))
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    raise TimelineError(
        f"{path!r} is not in the timelines: no video id {video_id(path)} and no video named {name!r} "
        f"(the run has {listed}{more})"
    )
