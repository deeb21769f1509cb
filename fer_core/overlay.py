"""Draw the timelines back onto video: faces interpolated between sampled frames, boxes and labels on every frame,
re-encoded with PyAV at the source's frame rate and timestamps.

The job samples a few frames per second; a rendered video has every frame. Between two sampled frames a track's
box and probabilities are interpolated linearly in time when the track exists at both; a track seen at only one
of them is drawn (held) within half a sampling interval of that frame, and not beyond, so a face is never drawn
where the detector had already lost it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd

from fer_core.labels import EMOTIONS, PROB_COLUMNS

_TIMESTAMP_TOLERANCE_S = 5e-4
"""Two timestamps closer than this are the same frame (decord stores times as float32)."""

# Distinct, readable colours for track ids (RGB).
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)


class RenderError(RuntimeError):
    """The annotated video cannot be written."""


@dataclass(frozen=True)
class DrawnFace:
    """One face to draw on one frame.

    Attributes:
        track_id: The face's track within the video.
        box: ``[x, y, w, h]`` float pixels of the frame.
        probs: The seven class probabilities, in `fer_core.labels.EMOTIONS` order.
        interpolated: False on a sampled frame, True between sampled frames.
    """

    track_id: int
    box: np.ndarray
    probs: np.ndarray
    interpolated: bool = False

    @property
    def emotion(self) -> str:
        return EMOTIONS[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))


def faces_from_rows(rows: list[dict] | pd.DataFrame) -> list[DrawnFace]:
    """The faces of rows in the faces schema (rows without a face are skipped)."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows
    out = []
    for r in records:
        if r.get("face_index") is None or pd.isna(r.get("face_index")) or pd.isna(r.get("track_id")):
            continue
        box = np.array([r["x"], r["y"], r["w"], r["h"]], dtype=np.float64)
        out.append(DrawnFace(int(r["track_id"]), box, np.array([r[c] for c in PROB_COLUMNS], dtype=np.float64)))
    return out


class TrackInterpolator:
    """The faces of one video at any time, from its sampled frames.

    Args:
        faces: The faces-table rows of ONE video (rows without a face mark sampled frames with no face).
    """

    def __init__(self, faces: pd.DataFrame) -> None:
        if faces["video_id"].nunique() > 1:
            raise ValueError(f"expected the rows of one video, got {faces['video_id'].nunique()} videos")
        faces = faces.sort_values(["timestamp_s", "face_index"], kind="stable", na_position="first")
        self.times = np.unique(faces["timestamp_s"].to_numpy(np.float64))
        """Sampled frame times, sorted."""
        steps = np.diff(self.times)
        self.median_step_s = float(np.median(steps)) if len(steps) else 0.0
        position = np.searchsorted(self.times, faces["timestamp_s"].to_numpy(np.float64))
        self._at: list[dict[int, DrawnFace]] = [{} for _ in self.times]
        has_face = (faces["face_index"].notna() & faces["track_id"].notna()).to_numpy()
        for pos, face in zip(position[has_face], faces_from_rows(faces[has_face])):
            self._at[int(pos)][face.track_id] = face

    def at(self, timestamp_s: float) -> list[DrawnFace]:
        """The faces to draw at ``timestamp_s``, in track id order."""
        if len(self.times) == 0:
            return []
        a = int(np.searchsorted(self.times, timestamp_s + _TIMESTAMP_TOLERANCE_S, side="right")) - 1
        if a >= 0 and timestamp_s - self.times[a] <= _TIMESTAMP_TOLERANCE_S:
            return [self._at[a][k] for k in sorted(self._at[a])]
        b = a + 1
        before = self._at[a] if a >= 0 else {}
        after = self._at[b] if b < len(self.times) else {}
        if a >= 0 and b < len(self.times):
            half = (self.times[b] - self.times[a]) / 2
        else:
            half = self.median_step_s / 2
        drawn = []
        for track in sorted(before.keys() | after.keys()):
            if track in before and track in after:
                alpha = (timestamp_s - self.times[a]) / (self.times[b] - self.times[a])
                p, q = before[track], after[track]
                drawn.append(DrawnFace(track, p.box + alpha * (q.box - p.box), p.probs + alpha * (q.probs - p.probs), True))
            elif track in before and timestamp_s - self.times[a] <= half + _TIMESTAMP_TOLERANCE_S:
                drawn.append(DrawnFace(track, before[track].box, before[track].probs, True))
            elif track in after and self.times[b] - timestamp_s <= half + _TIMESTAMP_TOLERANCE_S:
                drawn.append(DrawnFace(track, after[track].box, after[track].probs, True))
        return drawn


def track_colour(track_id: int) -> tuple[int, int, int]:
    """The RGB colour of a track id."""
    return _PALETTE[track_id % len(_PALETTE)]


def draw_faces(image_rgb: np.ndarray, faces: list[DrawnFace]) -> np.ndarray:
    """Draw boxes and ``#track emotion confidence`` labels on an RGB frame, in place; returns the frame."""
    import cv2

    height, width = image_rgb.shape[:2]
    side = min(height, width)
    thickness = max(2, round(side / 240))
    scale = max(0.4, side / 900)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for face in faces:
        x, y, w, h = (int(round(v)) for v in face.box)
        colour = track_colour(face.track_id)
        cv2.rectangle(image_rgb, (x, y), (x + w, y + h), colour, thickness)
        label = f"#{face.track_id} {face.emotion} {face.confidence:.0%}"
        (tw, th), base = cv2.getTextSize(label, font, scale, max(1, thickness // 2))
        top = y - th - base - 2 * thickness if y - th - base - 2 * thickness >= 0 else y + h
        top = min(max(0, top), max(0, height - th - base - 2 * thickness))
        cv2.rectangle(image_rgb, (x, top), (x + tw + 2 * thickness, top + th + base + 2 * thickness), colour, -1)
        text_colour = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        cv2.putText(image_rgb, label, (x + thickness, top + th + thickness), font, scale, text_colour,
                    max(1, thickness // 2), cv2.LINE_AA)
    return image_rgb


@dataclass
class RenderStats:
    """What :func:`render_video` wrote."""

    frames: int
    frames_with_faces: int
    fps: float
    codec: str
    seconds: float


def _pick_codec(codec: str) -> str:
    import av

    if codec != "auto":
        if codec not in av.codecs_available:
            raise RenderError(f"codec {codec!r} is not available in this PyAV build; use auto, libx264 or mpeg4")
        return codec
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _source_timing(path: str) -> tuple[Fraction, Fraction, float | None]:
    """(average frame rate, time base, duration in seconds or None) of the source's video stream."""
    import av

    from fer_core.video import UnreadableVideo

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise UnreadableVideo(f"{path!r} does not state a frame rate")
            time_base = Fraction(stream.time_base or Fraction(1, 90000))
            duration_s = float(stream.duration * time_base) if stream.duration else None
            return Fraction(rate), time_base, duration_s
    except (av.FFmpegError, IndexError) as e:
        raise UnreadableVideo(f"{path!r} is not a readable video ({e})") from e


class _Encoder:
    """Encodes RGB frames at given timestamps, one frame behind, so each packet carries its frame's true duration
    (the time to the next frame): variable frame rates and the average rate survive the re-encode."""

    def __init__(self, container, stream, time_base: Fraction, end_s: float | None) -> None:
        self.container, self.stream, self.time_base = container, stream, time_base
        self.end_pts = int(round(end_s / time_base)) if end_s else None
        self.pending: tuple[np.ndarray, int] | None = None
        self.durations: dict[int, int] = {}
        self.last_step = 1

    def add(self, image: np.ndarray, timestamp_s: float) -> None:
        pts = int(round(timestamp_s / self.time_base))
        if self.pending is not None:
            pts = max(pts, self.pending[1] + 1)
            self.last_step = pts - self.pending[1]
            self._encode(*self.pending, duration=self.last_step)
        else:  # the first frame sets the size (PyAV's default is 640 x 480)
            self.stream.width, self.stream.height = image.shape[1], image.shape[0]
        self.pending = (image, pts)

    def close(self) -> None:
        if self.pending is not None:
            image, pts = self.pending
            end = self.end_pts if self.end_pts is not None and self.end_pts > pts else pts + self.last_step
            self._encode(image, pts, duration=end - pts)
        for packet in self.stream.encode():
            self._mux(packet)

    def _encode(self, image: np.ndarray, pts: int, duration: int) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, self.time_base
        self.durations[pts] = duration
        for packet in self.stream.encode(frame):
            self._mux(packet)

    def _mux(self, packet) -> None:
        if packet.pts in self.durations:
            packet.duration = self.durations.pop(packet.pts)
        self.container.mux(packet)


def render_video(
    video_path: str,
    faces: pd.DataFrame,
    out_path: str,
    *,
    codec: str = "auto",
    decoder: str = "auto",
    on_frame: Callable[[int], None] | None = None,
) -> RenderStats:
    """Re-encode a video with its faces drawn on every frame.

    Every decoded frame is written once, with the presentation time and duration it has in the source (same frame
    count and frame rate; variable frame rates stay variable). Audio is not copied. Frames of odd width or height
    get one replicated pixel row or column (yuv420p needs even sizes). The file appears only once complete.

    Args:
        video_path: The local video file the timelines were made from.
        faces: Its rows of the faces table (from :func:`fer_core.analysis.load_timelines`, optionally smoothed).
        out_path: The video to write (``.mp4``).
        codec: ``libx264``, ``mpeg4`` or ``auto`` (libx264 where PyAV has it).
        decoder: As for :func:`fer_core.video.iter_frames`.
        on_frame: Called with the number of frames written so far, for progress.

    Raises:
        fer_core.video.VideoError: the video cannot be read.
        RenderError: the output cannot be written.
    """
    import av

    from fer_core.video import iter_frames, probe

    started = time.perf_counter()
    probe(video_path, decoder=decoder)  # clear errors for a missing or unreadable file before writing anything
    rate, time_base, duration_s = _source_timing(video_path)
    codec = _pick_codec(codec)
    interpolator = TrackInterpolator(faces)
    out_path = os.path.abspath(out_path)
    folder, name = os.path.split(out_path)
    if not os.path.isdir(folder):
        raise RenderError(f"cannot write {out_path!r}: folder {folder!r} does not exist")
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp{os.path.splitext(name)[1]}")
    frames = with_faces = 0
    try:
        with av.open(tmp, mode="w") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.pix_fmt = "yuv420p"
            if codec == "mpeg4" and time_base.denominator > 65535:
                time_base = Fraction(1, 60000)  # MPEG-4 part 2 caps the time base; exact for 25, 30 and 29.97 fps
            # The encoder works in the source's time base, so variable frame intervals keep their timestamps.
            stream.time_base = stream.codec_context.time_base = time_base
            if codec == "libx264":
                stream.options = {"crf": "20", "preset": "veryfast", "bf": "0"}  # no B-frames: exact frame durations
            else:
                stream.bit_rate = 8_000_000
            encoder = _Encoder(container, stream, time_base, duration_s)
            for frame in iter_frames(video_path, sample_fps=0, decoder=decoder):
                image = frame.image.copy()
                drawn = interpolator.at(frame.timestamp_s)
                if drawn:
                    draw_faces(image, drawn)
                    with_faces += 1
                encoder.add(_even(image), frame.timestamp_s)
                frames += 1
                if on_frame is not None:
                    on_frame(frames)
            encoder.close()
        os.replace(tmp, out_path)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise RenderError(f"cannot write {out_path!r} ({' '.join(str(e).split())})") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return RenderStats(frames, with_faces, float(rate), codec, time.perf_counter() - started)


def _even(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return image
    import cv2

    return cv2.copyMakeBorder(image, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
