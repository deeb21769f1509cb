"""A run's timelines as one self-contained HTML page: the videos table (failures highlighted) and, per finished
video, its summary (with the face-frames the usable-face rule dropped, when one is applied), its tracks, a plot of
the seven probabilities over time per track (PNG, embedded as base64) and its emotion episodes. Plots use
matplotlib's Agg canvas through ``matplotlib.figure.Figure``: no display, no global state.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from fer_core.analysis import (
    SHARE_COLUMNS,
    UsableRule,
    emotion_episodes,
    smooth_tracks,
    track_summary,
    usable_faces,
    video_summary,
)
from fer_core.labels import EMOTIONS, PROB_COLUMNS
from fer_core.schema import STATUS_OK

EMOTION_COLOURS: dict[str, str] = {
    "angry": "#d62728", "disgust": "#8c9a2b", "fear": "#9467bd", "happy": "#f2b01e",
    "sad": "#1f77b4", "surprise": "#17becf", "neutral": "#7f7f7f",
}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; margin: 1.2em 0 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fde2e2; } tr.failed td.status { color: #a40000; font-weight: bold; }
.note { color: #555; font-size: 0.9em; } img { max-width: 100%; }
"""


@dataclass
class Report:
    """The page and its plots."""

    html: str
    pngs: dict[str, bytes] = field(default_factory=dict)
    """File name -> PNG bytes, one plot per finished video with (usable) faces."""
    episodes: int = 0
    """Emotion episodes listed, over all videos."""
    faces_dropped: int | None = None
    """Face-frames the usable-face rule dropped, over all videos; None when no rule was applied."""


def _cell(value: object, digits: int = 2) -> tuple[str, bool]:
    """(escaped text, numeric?) of a table cell."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "", False
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)), False
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}", True
    if isinstance(value, (float, np.floating)):
        return f"{float(value):,.{digits}f}", True
    return html.escape(str(value)), False


def html_table(frame: pd.DataFrame, row_classes: list[str] | None = None, cell_classes: dict[str, str] | None = None) -> str:
    """An HTML table of a DataFrame's columns, with a CSS class per row and per column."""
    cell_classes = cell_classes or {}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i, record in enumerate(frame.itertuples(index=False)):
        cells = []
        for column, value in zip(frame.columns, record):
            text, numeric = _cell(value)
            classes = " ".join(c for c in ("num" if numeric else "", cell_classes.get(column, "")) if c)
            cells.append(f'<td class="{classes}">{text}</td>' if classes else f"<td>{text}</td>")
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _with_gaps(times: np.ndarray, values: np.ndarray, step_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Insert NaN where a track is absent for more than 1.5 sampling steps, so lines break instead of bridging."""
    if len(times) < 2 or step_s <= 0:
        return times, values
    gaps = np.flatnonzero(np.diff(times) > 1.5 * step_s)
    if len(gaps) == 0:
        return times, values
    times = np.insert(times, gaps + 1, (times[gaps] + times[gaps + 1]) / 2)
    values = np.insert(values.astype(np.float64), gaps + 1, np.nan, axis=0)
    return times, values


def timeline_png(faces: pd.DataFrame, track_ids: list[int], duration_s: float | None, title: str) -> bytes:
    """One subplot per track: the seven probabilities against video time (seconds); returns PNG bytes.

    Args:
        faces: The (smoothed) face rows of one video.
        track_ids: The tracks to plot, top to bottom.
        duration_s: The video's duration, for the time axis (None: the last sampled frame).
        title: The figure's title.
    """
    from matplotlib.figure import Figure

    faces = faces[faces["track_id"].isin(track_ids)]
    sampled = np.unique(faces["timestamp_s"].to_numpy())
    step_s = float(np.median(np.diff(sampled))) if len(sampled) > 1 else 0.0
    end_s = duration_s if duration_s and duration_s > 0 else float(faces["timestamp_s"].max() or 1.0)
    fig = Figure(figsize=(10, 0.6 + 1.5 * len(track_ids)), layout="constrained")
    axes = fig.subplots(len(track_ids), 1, sharex=True, squeeze=False)[:, 0]
    for ax, track in zip(axes, track_ids):
        rows = faces[faces["track_id"] == track].sort_values("timestamp_s")
        times, values = _with_gaps(rows["timestamp_s"].to_numpy(), rows[list(PROB_COLUMNS)].to_numpy(), step_s)
        for j, emotion in enumerate(EMOTIONS):
            ax.plot(times, values[:, j], color=EMOTION_COLOURS[emotion], linewidth=1.4, label=emotion)
        ax.set_ylim(0, 1)
        ax.set_xlim(0, end_s)
        ax.set_ylabel(f"track {track}", rotation=0, ha="right", va="center")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("video time (s)")
    axes[0].legend(ncols=len(EMOTIONS), loc="lower left", bbox_to_anchor=(0, 1.02), fontsize="small", frameon=False)
    fig.suptitle(title, fontsize="medium", x=0.01, ha="left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _png_name(video_path: str, video_id: str) -> str:
    stem = os.path.splitext(os.path.basename(str(video_path).rstrip("/")))[0]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)[:60]}_{video_id}.png"


def _percent(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for c in columns:
        frame[c] = frame[c].astype(np.float64) * 100
    return frame


def _usable_note(faces: pd.DataFrame, usable: UsableRule | None, dropped: int, total: int) -> str:
    """The page's line on which faces count."""
    if usable is not None:
        return (f"Usable faces only ({html.escape(usable.describe())}): {dropped:,} of {total:,} face-frames dropped. "
                "Frames sampled still counts every sampled frame; face_frame_% is the share with a usable face.")
    missing = UsableRule().missing_columns(faces)
    if missing:
        return ("All faces counted: these timelines have no head-pose and quality columns "
                f"({html.escape(', '.join(missing))}; written before jobs/annotate.py recorded them). "
                "Re-run jobs/annotate.py with --overwrite to leave out turned, blurred, small and cut-off faces.")
    return "All faces counted (--all-faces): none left out for pose, blur, size or the frame edge."


def build_report(
    faces: pd.DataFrame,
    videos: pd.DataFrame,
    *,
    smooth_s: float = 1.0,
    max_tracks: int = 6,
    title: str = "",
    usable: UsableRule | None = None,
    min_episode_s: float = 2.0,
    max_gap_s: float = 1.0,
) -> Report:
    """The HTML page of a run.

    Args:
        faces, videos: From :func:`fer_core.analysis.load_timelines`.
        smooth_s: Width of the centred rolling window, seconds of video time, applied to the plotted
            probabilities and before finding episodes (0 = raw).
        max_tracks: Plot at most this many tracks per video, the longest (by face-time); the page says so when
            it leaves tracks out.
        title: Shown at the top (e.g. the timelines folder).
        usable: Count, plot and find episodes in only the faces this rule keeps
            (:func:`fer_core.analysis.usable_faces`); the page says how many face-frames it dropped per video.
            None = every face (the page says why, when the timelines lack the columns the rule reads).
        min_episode_s, max_gap_s: Of :func:`fer_core.analysis.emotion_episodes`, listed per video.

    Raises:
        fer_core.analysis.TimelineError: ``faces`` lacks a column ``usable`` needs.
        ValueError: ``min_episode_s`` or ``max_gap_s`` is negative.
    """
    smooth = smooth_tracks(faces, window_s=smooth_s, usable=usable) if smooth_s > 0 else faces
    summary = video_summary(faces, videos, usable=usable)
    tracks = track_summary(faces, usable=usable)
    episodes = emotion_episodes(smooth, min_episode_s, max_gap_s=max_gap_s, usable=usable)
    plotted_rows = smooth[usable_faces(smooth, usable)] if usable is not None else smooth
    dropped = int(summary["faces_dropped"].sum()) if usable is not None else 0
    pngs: dict[str, bytes] = {}
    ok = videos["status"] == STATUS_OK
    model = ", ".join(sorted(videos["model"].dropna().unique()))
    detector = ", ".join(sorted(videos["detector"].dropna().unique()))
    parts = [
        f"<h1>Emotion timelines{': ' + html.escape(title) if title else ''}</h1>",
        f'<p class="note">{len(videos)} videos: {int(ok.sum())} ok, {int((~ok).sum())} failed. '
        f"Model {html.escape(model or '?')}, detector {html.escape(detector or '?')}. "
        f"Plots smoothed over {smooth_s:g} s of video time. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
        f'<p class="note">{_usable_note(faces, usable, dropped, int(summary["faces"].sum()) + dropped)}</p>',
        '<p class="note">The model labels facial expressions as displayed, the way FER-2013\'s annotators labelled '
        "web images; it does not read what anyone feels. Use these numbers for aggregate, human-reviewed analysis.</p>",
        "<h2>Videos</h2>",
    ]
    table = videos.assign(file=videos["video_path"].map(lambda p: os.path.basename(str(p).rstrip("/"))))
    table = table[["file", "status", "error", "duration_s", "fps", "width", "height", "frames_sampled",
                   "frames_with_face", "faces", "video_path"]]
    counts = ["width", "height", "frames_sampled", "frames_with_face", "faces"]
    table = table.astype({c: "Int64" for c in counts})  # null for failed videos
    parts.append(html_table(table, ["" if s == STATUS_OK else "failed" for s in table["status"]], {"status": "status"}))

    dropped_column = ["faces_dropped"] if usable is not None else []
    for _, video in summary[summary["status"] == STATUS_OK].iterrows():
        name = os.path.basename(str(video["video_path"]).rstrip("/"))
        parts.append(f"<h2>{html.escape(name)}</h2><p class=\"note\">{html.escape(str(video['video_path']))} "
                     f"(video id {html.escape(video['video_id'])})</p>")
        shown = _percent(video.to_frame().T, ["face_frame_share", *SHARE_COLUMNS])
        shown = shown[["duration_s", "frames_sampled", "face_frame_share", "faces", *dropped_column, "tracks",
                       "face_time_s", "dominant_emotion", *SHARE_COLUMNS]]
        shown = shown.rename(columns={"face_frame_share": "face_frame_%"})
        shown.columns = [c.replace("share_", "% ") for c in shown.columns]
        parts.append(html_table(shown.infer_objects()))
        video_tracks = tracks[tracks["video_id"] == video["video_id"]]
        if video_tracks.empty:
            if usable is not None and video["faces_dropped"] > 0:
                parts.append(f'<p class="note">No usable faces in this video: the rule dropped all '
                             f"{int(video['faces_dropped']):,} face-frames.</p>")
            else:
                parts.append('<p class="note">No faces were detected in this video.</p>')
            continue
        longest = video_tracks.sort_values(["duration_s", "start_s"], ascending=[False, True]).head(max_tracks)
        plotted = sorted(longest["track_id"].astype(int).tolist(), key=lambda t: float(
            longest.loc[longest["track_id"] == t, "start_s"].iloc[0]))
        if len(video_tracks) > len(plotted):
            parts.append(f'<p class="note">Plotting the {len(plotted)} longest of {len(video_tracks)} tracks '
                         f"(--max-tracks); the table lists them all.</p>")
        png = timeline_png(plotted_rows[plotted_rows["video_id"] == video["video_id"]], plotted, video["duration_s"],
                           f"{name}: probabilities per track over time")
        png_name = _png_name(video["video_path"], video["video_id"])
        pngs[png_name] = png
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(f'<img alt="probabilities per track over time for {html.escape(name)}" '
                     f'src="data:image/png;base64,{encoded}">')
        track_table = _percent(video_tracks, list(SHARE_COLUMNS))
        track_table = track_table[["track_id", "start_s", "end_s", "duration_s", "frames",
                                   *(["frames_dropped"] if usable is not None else []), "dominant_emotion",
                                   *SHARE_COLUMNS]]
        track_table.columns = [c.replace("share_", "% ") for c in track_table.columns]
        parts.append(html_table(track_table))
        parts.append(_episodes_part(episodes[episodes["video_id"] == video["video_id"]], min_episode_s, max_gap_s,
                                    smooth_s))
    if not ok.any():
        parts.append('<p class="note">No video finished: nothing to plot.</p>')
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Emotion timelines{': ' + html.escape(title) if title else ''}</title><style>{_CSS}</style></head>"
        f"<body>\n{chr(10).join(parts)}\n</body></html>\n"
    )
    return Report(page, pngs, episodes=len(episodes), faces_dropped=dropped if usable is not None else None)


def _episodes_part(episodes: pd.DataFrame, min_episode_s: float, max_gap_s: float, smooth_s: float) -> str:
    """One video's episodes: a heading, what they are, and their table (or a line saying there is none)."""
    what = (f"Stretches of at least {min_episode_s:g} s where one emotion is a track's most probable class "
            f"(probabilities smoothed over {smooth_s:g} s; a track unseen for more than {max_gap_s:g} s ends one)")
    if episodes.empty:
        return f'<h3>Episodes</h3><p class="note">{html.escape(what)}: none in this video.</p>'
    shown = episodes[["track_id", "start_s", "end_s", "duration_s", "emotion", "mean_p", "frames"]]
    return (f'<h3>Episodes</h3><p class="note">{html.escape(what)}: {len(episodes)} in this video.</p>'
            + html_table(shown.rename(columns={"mean_p": "mean p"})))
