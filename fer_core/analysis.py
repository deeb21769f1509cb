"""Read a run's timelines back and summarise them with pandas: smoothed tracks, per-video, per-track and
per-window summaries, emotion episodes, and the rule that says which faces are good enough to count. No Ray.

Time is always video time in seconds (``timestamp_s``), never rows: a clip sampled at 5 fps and one sampled at
every frame give the same summaries. Each sampled frame stands for the time until the next sampled frame of its
video (its *frame duration*; the last frame gets the video's median sampling interval, a one-frame video 1 s),
so "share of face-time" weighs faces by how long they were on screen, also for variable frame rates.

    faces, videos = load_timelines("timelines/")
    smooth = smooth_tracks(faces, window_s=1.0)
    video_summary(smooth, videos)
    emotion_episodes(smooth, min_duration_s=2.0)

Every summary takes ``usable=UsableRule()`` to count only faces that are frontal, sharp, big and inside the frame
enough to be read (:func:`usable_faces`); ``usable=None`` (the default) counts every face.
"""

from __future__ import annotations

import math
import os
import posixpath
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fer_core import storage
from fer_core.labels import EMOTIONS, PROB_COLUMNS
from fer_core.measures import MEASURE_COLUMNS
from fer_core.schema import FACES_SCHEMA, STATUS_OK, VIDEOS_SCHEMA

SHARE_COLUMNS: tuple[str, ...] = tuple(f"share_{name}" for name in EMOTIONS)
"""Share of face-time per class, in summaries (0..1, summing to 1 where there are faces)."""

MEAN_PROB_COLUMNS: tuple[str, ...] = tuple(f"mean_{name}" for name in PROB_COLUMNS)
"""Time-weighted mean probability per class, in :func:`track_summary`."""

SMOOTHING_METHODS: tuple[str, ...] = ("rolling", "ewm")

EPISODE_COLUMNS: tuple[str, ...] = ("video_id", "video_path", "track_id", "start_s", "end_s", "duration_s",
                                    "emotion", "mean_p", "frames")
"""The columns of :func:`emotion_episodes`."""

_OPTIONAL_FACE_COLUMNS = frozenset(MEASURE_COLUMNS) & set(FACES_SCHEMA.names)
"""Landmark, pose and quality columns: timelines written before they existed still load, without them."""

_TIME_EPSILON_S = 1e-9
"""Tolerance of time comparisons, so that 0.6 - (0.4 + 0.2) counts as no gap."""


class TimelineError(ValueError):
    """A timelines folder is missing, holds no Parquet files, has the wrong schema, or records no video; or a
    faces table lacks the columns a helper needs."""


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


def _read_table(
    fs: pafs.FileSystem, files: list[str], schema: pa.Schema, shown: str, optional: frozenset[str] = frozenset()
) -> pa.Table:
    """The files' rows in ``schema``; a column in ``optional`` that a file lacks is null in its rows, and dropped
    from the result when no file has it."""
    tables = []
    seen: set[str] = set()
    for path in files:
        name = f"{shown}/{posixpath.basename(path)}"
        try:
            table = pq.read_table(path, filesystem=fs)
        except (OSError, pa.ArrowException) as e:
            raise TimelineError(f"{name!r} is not a readable Parquet file ({' '.join(str(e).split())[:200]})") from e
        missing = [f.name for f in schema if f.name not in table.schema.names and f.name not in optional]
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
        seen.update(table.schema.names)
        for f in schema:
            if f.name not in table.schema.names:
                table = table.append_column(f, pa.nulls(table.num_rows, f.type))
        tables.append(table.select(schema.names).cast(schema))
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables).drop_columns([name for name in schema.names if name not in seen])


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
        Timelines written before the faces table recorded landmarks, head pose and quality
        (:data:`fer_core.measures.MEASURE_COLUMNS`) load without those columns (:func:`usable_faces` then says
        so); in a run mixing older and newer files they are null in the older files' rows.

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
        faces = _read_table(fs, face_files, FACES_SCHEMA, f"{shown}/faces", _OPTIONAL_FACE_COLUMNS)
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
# Usable faces


DEFAULT_MIN_SHARPNESS = 40.0
"""Default :attr:`UsableRule.min_sharpness` (variance of the Laplacian of the 64x64 grey face crop).

Calibrated on FER-2013 PublicTest faces blurred at 0-2 px (``benchmarks/sharpness_calibration.py``): the shipped
classifier is right on 69% of faces above 320, 52% in [40, 80), 43% in [20, 40) and 33% in [10, 20); below 40
it is wrong on more than half."""


def _check_threshold(name: str, value: float | None, upper: float = math.inf) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= value <= upper or not math.isfinite(value):
        bound = f" and <= {upper:g}" if math.isfinite(upper) else ""
        raise ValueError(f"UsableRule.{name} must be a finite number >= 0{bound}, or None to skip the check; "
                         f"got {value!r}")


@dataclass(frozen=True)
class UsableRule:
    """Which faces are good enough to count: frontal enough, sharp enough, big enough and inside the frame.

    The classifier was trained on FER-2013's mostly frontal, centred faces; on a face turned far away, blurred by
    motion, a few pixels tall or cut by the frame edge its probabilities say little. A face row is *usable* when
    it passes every check whose threshold is not None. A face whose measure is null (its pose is unknown because
    the detector gave no landmarks, as with the Haar cascade, which only finds near-frontal faces anyway; or
    sharpness of a degenerate box) passes that check when ``keep_unknown`` is True (the default) and is dropped
    when it is False. Rows of frames without a face are never usable and never dropped: they stay "no face".

    The default: ``|yaw_deg| <= 40``, ``sharpness >= DEFAULT_MIN_SHARPNESS`` (40), ``min(w, h) >= 40`` px,
    ``in_frame >= 0.9``, unknown measures kept.
    """

    max_abs_yaw_deg: float | None = 40.0
    """Drop faces turned further than this from frontal, degrees of ``|yaw_deg|`` (pose estimates are off by
    5-10 degrees, growing past about 45)."""
    min_sharpness: float | None = DEFAULT_MIN_SHARPNESS
    """Drop blurred faces: ``sharpness`` (variance of the Laplacian of the 64x64 grey crop) below this."""
    min_face_px: float | None = 40
    """Drop small faces: the box's shorter side, ``min(w, h)`` in frame pixels, below this (the classifier reads
    48x48 px; a smaller face is mostly upscaled)."""
    min_in_frame: float | None = 0.9
    """Drop faces cut by the frame edge: ``in_frame`` (share of the detector's box inside the frame) below this."""
    keep_unknown: bool = True
    """A face whose measure is null passes that check (True) or is dropped (False)."""

    def __post_init__(self) -> None:
        _check_threshold("max_abs_yaw_deg", self.max_abs_yaw_deg)
        _check_threshold("min_sharpness", self.min_sharpness)
        _check_threshold("min_face_px", self.min_face_px)
        _check_threshold("min_in_frame", self.min_in_frame, upper=1.0)
        if not isinstance(self.keep_unknown, (bool, np.bool_)):
            raise ValueError(f"UsableRule.keep_unknown must be True or False, got {self.keep_unknown!r}")

    @property
    def columns(self) -> tuple[str, ...]:
        """The faces columns the rule's checks read."""
        needed = [("yaw_deg",) if self.max_abs_yaw_deg is not None else (),
                  ("sharpness",) if self.min_sharpness is not None else (),
                  ("w", "h") if self.min_face_px is not None else (),
                  ("in_frame",) if self.min_in_frame is not None else ()]
        return tuple(c for group in needed for c in group)

    def missing_columns(self, faces: pd.DataFrame) -> list[str]:
        """The columns the rule needs that ``faces`` lacks (e.g. timelines written before they were recorded)."""
        return [c for c in self.columns if c not in faces.columns]

    def describe(self) -> str:
        """The rule in words, e.g. for a report."""
        checks = []
        if self.max_abs_yaw_deg is not None:
            checks.append(f"|yaw| <= {self.max_abs_yaw_deg:g} deg")
        if self.min_sharpness is not None:
            checks.append(f"sharpness >= {self.min_sharpness:g}")
        if self.min_face_px is not None:
            checks.append(f"min(w, h) >= {self.min_face_px:g} px")
        if self.min_in_frame is not None:
            checks.append(f"in frame >= {self.min_in_frame:.0%}")
        if not checks:
            return "no checks"
        return ", ".join(checks) + ("; unknown measures kept" if self.keep_unknown else "; unknown measures dropped")


def _require(faces: pd.DataFrame, columns: tuple[str, ...] | list[str], what: str) -> None:
    missing = [c for c in columns if c not in faces.columns]
    if missing:
        raise TimelineError(f"{what} needs the faces columns {', '.join(missing)}, which this table lacks; "
                            "pass the faces table of load_timelines (or pd.read_parquet of timelines/faces)")


def usable_faces(faces: pd.DataFrame, rule: UsableRule = UsableRule()) -> pd.Series:
    """Which rows of a faces table hold a usable face.

    Args:
        faces: The faces table (e.g. from :func:`load_timelines`).
        rule: The checks (see :class:`UsableRule`; its defaults when not given).

    Returns:
        bool, aligned with ``faces``: True for a face row that passes the rule, False for a face it drops and for
        every row of a frame without a face (``face_rows & ~usable`` are the dropped faces).

    Raises:
        TimelineError: ``faces`` lacks a column the rule needs, e.g. timelines written before jobs/annotate.py
            recorded head pose and quality; the message says to re-run it or to count all faces.
    """
    missing = rule.missing_columns(faces)
    if missing:
        raise TimelineError(
            f"the usable-face rule needs the faces columns {', '.join(missing)}, which these timelines lack "
            "(written before jobs/annotate.py recorded head pose and quality): re-run jobs/annotate.py with "
            "--overwrite, or count all faces (usable=None)"
        )
    _require(faces, ("face_index", "track_id"), "usable_faces")
    keep = _face_rows(faces).to_numpy().copy()
    checks = []
    if rule.max_abs_yaw_deg is not None:
        checks.append((faces["yaw_deg"].astype(np.float64).abs(), lambda v: v <= rule.max_abs_yaw_deg))
    if rule.min_sharpness is not None:
        checks.append((faces["sharpness"].astype(np.float64), lambda v: v >= rule.min_sharpness))
    if rule.min_face_px is not None:
        side = faces[["w", "h"]].astype(np.float64).min(axis=1, skipna=False)
        checks.append((side, lambda v: v >= rule.min_face_px))
    if rule.min_in_frame is not None:
        checks.append((faces["in_frame"].astype(np.float64), lambda v: v >= rule.min_in_frame))
    for values, passes in checks:
        values = values.to_numpy()
        unknown = np.isnan(values)
        with np.errstate(invalid="ignore"):
            keep &= np.where(unknown, rule.keep_unknown, passes(values))
    return pd.Series(keep, index=faces.index, name="usable")


def _counted_rows(faces: pd.DataFrame, usable: UsableRule | None) -> tuple[pd.Series, pd.Series]:
    """``(face rows, counted face rows)``: all faces, and those the rule keeps (all of them without a rule)."""
    is_face = _face_rows(faces)
    return is_face, (usable_faces(faces, usable) if usable is not None else is_face)


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


def smooth_tracks(
    faces: pd.DataFrame, window_s: float = 1.0, method: str = "rolling", *, usable: UsableRule | None = None
) -> pd.DataFrame:
    """Smooth the seven probabilities of each face track over video time.

    Each ``(video_id, track_id)`` is smoothed on its own, in seconds of ``timestamp_s`` (not rows), then
    ``emotion`` and ``confidence`` are recomputed from the smoothed probabilities, which still sum to 1.

    Args:
        faces: The faces table (e.g. from :func:`load_timelines`); rows without a face are kept unchanged.
        window_s: ``"rolling"``: a centred window of this width (a row averages the track's rows within
            ``window_s / 2`` of it, before and after); ``"ewm"``: the half-life of a causal exponentially
            weighted mean over time (a row ``window_s`` seconds older weighs half as much). 0 = no smoothing.
        method: ``"rolling"`` (for offline analysis: no lag) or ``"ewm"`` (uses only the past, as live use would).
        usable: Smooth over the usable faces only (:func:`usable_faces`): a face the rule drops neither is
            smoothed nor leaks into its neighbours; it keeps its raw values. Pass the same rule to the summaries.
            None = every face.

    Returns:
        A copy of ``faces`` in the same row order, with smoothed ``p_*``, ``emotion`` and ``confidence``.

    Raises:
        ValueError: for a negative ``window_s`` or an unknown ``method``.
        TimelineError: ``faces`` lacks a column ``usable`` needs.
    """
    if method not in SMOOTHING_METHODS:
        raise ValueError(f"unknown smoothing method {method!r}; expected one of {', '.join(SMOOTHING_METHODS)}")
    if not window_s >= 0 or not np.isfinite(window_s):
        raise ValueError(f"window_s must be a finite number of seconds >= 0, got {window_s!r}")
    out = faces.copy()
    rows = out.index[_counted_rows(out, usable)[1]]
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


def video_summary(faces: pd.DataFrame, videos: pd.DataFrame, *, usable: UsableRule | None = None) -> pd.DataFrame:
    """One row per video of the run (failed videos included, with empty counts).

    Args:
        faces, videos: From :func:`load_timelines`.
        usable: Count only the faces this rule keeps (:func:`usable_faces`); None = every face. A dropped face's
            frame still counts as sampled, as a frame without a (usable) face: ``frames_sampled`` stays the
            sampling of the video, and ``face_frame_share`` becomes the share of sampled frames with a usable face.

    Columns:
        video_id, video_path, status, error: from the videos table.
        duration_s: the video's duration from the container, seconds.
        frames_sampled: sampled frames in ``faces`` (0 for a failed video).
        face_frame_share: share of sampled frames with at least one (usable) face (NaN without sampled frames).
        faces: (usable) face rows (one per face per sampled frame).
        faces_dropped: only with ``usable``: face rows the rule dropped.
        tracks: distinct face tracks with a (usable) face.
        face_time_s: seconds of face presence summed over (usable) faces (two faces for 1 s count 2 s).
        share_angry … share_neutral: share of face-time each emotion is the most probable class (sums to 1;
            NaN without faces).
        dominant_emotion: the emotion with the largest share (None without faces).

    Raises:
        TimelineError: ``faces`` lacks a column ``usable`` needs.
    """
    faces = faces.assign(frame_duration_s=frame_durations(faces))
    is_face, counted = _counted_rows(faces, usable)
    frame_has_face = counted.groupby([faces["video_id"], faces["frame_index"]]).any()
    per_video = frame_has_face.groupby(level="video_id").agg(frames_sampled="size", face_frame_share="mean")
    face_rows = faces[counted]
    counts = face_rows.groupby("video_id").agg(
        faces=("video_id", "size"), tracks=("track_id", "nunique"), face_time_s=("frame_duration_s", "sum")
    )
    dropped = (is_face & ~counted).groupby(faces["video_id"]).sum().rename("faces_dropped")
    shares = _emotion_shares(face_rows, ["video_id"])
    table = videos[["video_id", "video_path", "status", "error", "duration_s"]].set_index("video_id")
    table = table.join(per_video).join(counts).join(dropped).join(shares)
    for column in ("frames_sampled", "faces", "faces_dropped", "tracks"):
        table[column] = table[column].fillna(0).astype(np.int64)
    table["face_time_s"] = table["face_time_s"].fillna(0.0)
    table["dominant_emotion"] = table["dominant_emotion"].astype(object).where(table["faces"] > 0, None)
    columns = ["video_path", "status", "error", "duration_s", "frames_sampled", "face_frame_share", "faces",
               *(["faces_dropped"] if usable is not None else []), "tracks", "face_time_s", *SHARE_COLUMNS,
               "dominant_emotion"]
    return table[columns].reset_index()


def track_summary(faces: pd.DataFrame, *, usable: UsableRule | None = None) -> pd.DataFrame:
    """One row per face track, ordered by video and start time.

    Args:
        faces: The faces table (e.g. from :func:`load_timelines`, smoothed or not).
        usable: Summarise only the faces this rule keeps (:func:`usable_faces`); a track none of whose faces is
            usable is left out. None = every face.

    Columns:
        video_id, video_path, track_id.
        start_s, end_s: times of the track's first and last sampled frame (with a (usable) face).
        duration_s: face-time of the track (its frames' durations summed; at least one sampling interval).
        frames: sampled frames the track appears in (with a usable face, with ``usable``).
        frames_dropped: only with ``usable``: the track's frames whose face the rule dropped.
        mean_p_angry … mean_p_neutral: time-weighted mean probabilities.
        share_angry … share_neutral: share of the track's time each emotion is the most probable class.
        dominant_emotion: the emotion with the largest share of the track's time.

    Raises:
        TimelineError: ``faces`` lacks a column ``usable`` needs.
    """
    faces = faces.assign(frame_duration_s=frame_durations(faces))
    is_face, counted = _counted_rows(faces, usable)
    rows = faces[counted].copy()
    keys = ["video_id", "track_id"]
    columns = ["video_id", "video_path", "track_id", "start_s", "end_s", "duration_s", "frames",
               *(["frames_dropped"] if usable is not None else []), *MEAN_PROB_COLUMNS, *SHARE_COLUMNS,
               "dominant_emotion"]
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
    if usable is not None:
        dropped = faces[is_face & ~counted]
        per_track = dropped.groupby([dropped["video_id"], dropped["track_id"].astype(np.int64)])["frame_index"]
        basic["frames_dropped"] = per_track.nunique().reindex(basic.index, fill_value=0).astype(np.int64)
    means = sums.div(basic["duration_s"].where(basic["duration_s"] > 0), axis=0)
    means = means.fillna(rows.groupby(keys)[list(PROB_COLUMNS)].mean())
    means.columns = list(MEAN_PROB_COLUMNS)
    table = basic.join(means).join(_emotion_shares(rows, keys)).reset_index()
    table = table.sort_values(["video_path", "video_id", "start_s", "track_id"], kind="stable")
    return table[columns].reset_index(drop=True)


def emotion_windows(
    faces: pd.DataFrame, window_s: float = 5.0, *, usable: UsableRule | None = None
) -> pd.DataFrame:
    """The dominant emotion and face presence per fixed time window of each video.

    Windows are ``[k * window_s, (k + 1) * window_s)`` from 0 to the video's last sampled frame; every window
    is listed, also one that holds no sampled frame.

    Args:
        faces: The faces table (e.g. from :func:`load_timelines`, smoothed or not).
        window_s: The width of a window, seconds of video time.
        usable: Count only the faces this rule keeps (:func:`usable_faces`), as in :func:`video_summary`: a
            dropped face's frame still counts in ``frames_sampled``. None = every face.

    Columns:
        video_id, video_path, window_index, start_s, end_s.
        frames_sampled: sampled frames in the window.
        face_frame_share: share of them with at least one (usable) face (NaN without sampled frames).
        faces: (usable) face rows in the window.
        faces_dropped: only with ``usable``: face rows in the window the rule dropped.
        share_angry … share_neutral: share of the window's face-time per emotion (NaN without faces).
        dominant_emotion: the emotion with the largest share (None without faces).
        dominant_share: its share.

    Raises:
        ValueError: if ``window_s`` is not a positive number.
        TimelineError: ``faces`` lacks a column ``usable`` needs.
    """
    if not window_s > 0 or not np.isfinite(window_s):
        raise ValueError(f"window_s must be a finite number of seconds > 0, got {window_s!r}")
    dropped_column = ["faces_dropped"] if usable is not None else []
    columns = ["video_id", "video_path", "window_index", "start_s", "end_s", "frames_sampled", "face_frame_share",
               "faces", *dropped_column, *SHARE_COLUMNS, "dominant_emotion", "dominant_share"]
    if faces.empty:
        if usable is not None:
            usable_faces(faces, usable)  # the same missing-column error as with rows
        return pd.DataFrame(columns=columns)
    faces = faces.assign(
        frame_duration_s=frame_durations(faces),
        window_index=np.floor(faces["timestamp_s"].clip(lower=0) / window_s).astype(np.int64),
    )
    is_face, counted = _counted_rows(faces, usable)
    keys = ["video_id", "window_index"]
    frame_has_face = counted.groupby([faces["video_id"], faces["window_index"], faces["frame_index"]]).any()
    presence = frame_has_face.groupby(level=keys).agg(frames_sampled="size", face_frame_share="mean")
    face_counts = pd.DataFrame({"faces": counted, "faces_dropped": is_face & ~counted})
    face_counts = face_counts.groupby([faces["video_id"], faces["window_index"]]).sum()
    shares = _emotion_shares(faces[counted], keys)
    last = faces.groupby("video_id").agg(video_path=("video_path", "first"), last=("window_index", "max"))
    grid = pd.MultiIndex.from_tuples(
        [(vid, k) for vid, n in last["last"].items() for k in range(int(n) + 1)], names=keys
    )
    table = pd.DataFrame(index=grid).join(presence).join(face_counts).join(shares).reset_index()
    table["video_path"] = table["video_id"].map(last["video_path"])
    table["start_s"] = table["window_index"] * window_s
    table["end_s"] = table["start_s"] + window_s
    for column in ("frames_sampled", "faces", "faces_dropped"):
        table[column] = table[column].fillna(0).astype(np.int64)
    table["dominant_emotion"] = table["dominant_emotion"].astype(object).where(table["faces"] > 0, None)
    share_values = table[list(SHARE_COLUMNS)].to_numpy(np.float64)
    table["dominant_share"] = np.where(table["faces"] > 0, np.nanmax(np.nan_to_num(share_values, nan=0.0), axis=1), np.nan)
    table = table.sort_values(["video_path", "video_id", "window_index"], kind="stable")
    return table[columns].reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Episodes


def _check_seconds(name: str, value: float, allow_inf: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not value >= 0 or (not allow_inf and not math.isfinite(value)):
        kind = "a number of seconds >= 0" if allow_inf else "a finite number of seconds >= 0"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def emotion_episodes(
    faces: pd.DataFrame,
    min_duration_s: float = 2.0,
    *,
    max_gap_s: float = 1.0,
    smooth_s: float = 0.0,
    usable: UsableRule | None = None,
) -> pd.DataFrame:
    """The stretches of each face track where one emotion is the most probable for at least ``min_duration_s``.

    What people coding interview footage annotate by hand: "track 3 happy from 12.4 s to 17.0 s". A stretch is a
    run of a track's consecutive (usable) face rows, in time order, whose ``emotion`` (the most probable class)
    stays the same. It ends where the emotion changes, also for a single frame, or where the track goes unseen
    for more than ``max_gap_s``; it becomes an episode if it lasts ``min_duration_s`` or longer. Raw
    probabilities flicker from frame to frame, so smooth first: pass faces from :func:`smooth_tracks` (with the
    same ``usable``), or ``smooth_s`` to smooth here; then a blip shorter than the smoothing window does not end
    a stretch.

    Args:
        faces: The faces table, smoothed (e.g. ``smooth_tracks(faces, window_s=1.0)``).
        min_duration_s: The shortest stretch that counts as an episode, seconds of video time.
        max_gap_s: A track unseen for longer than this (seconds between the end of one of its sampled frames and
            its next one: no face, or a face the rule dropped) ends a stretch; ``math.inf``: gaps never do.
        smooth_s: If > 0, first :func:`smooth_tracks` with a centred window of this width (over the usable faces
            only, with ``usable``); 0 = take ``faces`` as given.
        usable: Count only the faces this rule keeps (:func:`usable_faces`); a dropped face is a gap in its
            track. None = every face.

    Returns:
        One row per episode, ordered by video, start time and track, with the columns of
        :data:`EPISODE_COLUMNS`:

        - video_id, video_path, track_id.
        - start_s: the time of the stretch's first sampled frame.
        - end_s: the end of its last sampled frame (that frame's time plus its frame duration, see
          :func:`frame_durations`), so episodes of a track that follow each other meet.
        - duration_s: ``end_s - start_s`` (gaps of at most ``max_gap_s`` inside it included).
        - emotion: the emotion that holds.
        - mean_p: its time-weighted mean probability over the stretch.
        - frames: sampled frames in the stretch.

    Raises:
        ValueError: ``min_duration_s``, ``max_gap_s`` or ``smooth_s`` is negative or not a number (or
            infinite, except ``max_gap_s``).
        TimelineError: ``faces`` lacks a column this needs, or one ``usable`` needs.
    """
    _check_seconds("min_duration_s", min_duration_s)
    _check_seconds("max_gap_s", max_gap_s, allow_inf=True)
    _check_seconds("smooth_s", smooth_s)
    _require(faces, ("video_id", "video_path", "frame_index", "timestamp_s", "face_index", "track_id", "emotion",
                     *PROB_COLUMNS), "emotion_episodes")
    if smooth_s > 0:
        faces = smooth_tracks(faces, window_s=smooth_s, usable=usable)
    faces = faces.assign(frame_duration_s=frame_durations(faces))
    rows = faces[_counted_rows(faces, usable)[1]]
    if rows.empty:
        return pd.DataFrame(columns=list(EPISODE_COLUMNS))
    rows = rows.assign(track_id=rows["track_id"].astype(np.int64))
    rows = rows.sort_values(["video_id", "track_id", "timestamp_s"], kind="stable")
    emotion = rows["emotion"].to_numpy(object)
    start = rows["timestamp_s"].to_numpy(np.float64)
    end = start + rows["frame_duration_s"].to_numpy(np.float64)
    same_track = (rows["video_id"].to_numpy(object)[1:] == rows["video_id"].to_numpy(object)[:-1]) \
        & (rows["track_id"].to_numpy()[1:] == rows["track_id"].to_numpy()[:-1])
    unseen_s = start[1:] - end[:-1]
    continues = same_track & (emotion[1:] == emotion[:-1]) & (unseen_s <= max_gap_s + _TIME_EPSILON_S)
    stretch = np.concatenate([[0], np.cumsum(~continues)])
    # The probability of the row's own emotion (its most probable class), weighted by its frame duration.
    column = {name: j for j, name in enumerate(EMOTIONS)}
    probs = rows[list(PROB_COLUMNS)].to_numpy(np.float64)
    p_own = probs[np.arange(len(rows)), [column[e] for e in emotion]]
    weight = rows["frame_duration_s"].to_numpy(np.float64)
    grouped = pd.DataFrame({
        "stretch": stretch, "video_id": rows["video_id"].to_numpy(object),
        "video_path": rows["video_path"].to_numpy(object), "track_id": rows["track_id"].to_numpy(np.int64),
        "start_s": start, "end_s": end, "emotion": emotion, "weighted_p": p_own * weight, "weight": weight,
        "p": p_own, "frame_index": rows["frame_index"].to_numpy(np.int64),
    }).groupby("stretch", sort=False)
    table = grouped.agg(
        video_id=("video_id", "first"), video_path=("video_path", "first"), track_id=("track_id", "first"),
        start_s=("start_s", "min"), end_s=("end_s", "max"), emotion=("emotion", "first"),
        weighted_p=("weighted_p", "sum"), weight=("weight", "sum"), plain_p=("p", "mean"),
        frames=("frame_index", "nunique"),
    )
    table["duration_s"] = table["end_s"] - table["start_s"]
    table["mean_p"] = (table["weighted_p"] / table["weight"].where(table["weight"] > 0)).fillna(table["plain_p"])
    table = table[table["duration_s"] >= min_duration_s - _TIME_EPSILON_S]
    table = table.sort_values(["video_path", "video_id", "start_s", "track_id"], kind="stable")
    return table[list(EPISODE_COLUMNS)].reset_index(drop=True)


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
