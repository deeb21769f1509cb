"""jobs/report.py and jobs/render.py: interpolation and page building on tiny timelines (episodes and the
usable-face rule included), then the commands as a user runs them on hand-built and on the real job's output,
with their error paths."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fer_core.analysis import TimelineError, UsableRule
from fer_core.labels import EMOTIONS
from fer_core.measures import MEASURE_COLUMNS
from fer_core.overlay import TrackInterpolator, draw_faces, faces_from_rows
from fer_core.report_page import build_report
from fer_core.schema import FACES_SCHEMA, VIDEOS_SCHEMA
from tools_support import invoke, one_error, run_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def face(t: float, track: int, emotion: str, box=(100, 100, 50, 50), frame: int | None = None, face_index: int = 0) -> dict:
    probs = {f"p_{e}": (0.7 if e == emotion else 0.05) for e in EMOTIONS}
    return {"video_id": "v", "video_path": "/v/clip.mp4", "frame_index": frame if frame is not None else round(t * 30),
            "timestamp_s": t, "face_index": face_index, "track_id": track, "x": box[0], "y": box[1], "w": box[2],
            "h": box[3], "det_score": 0.9, "emotion": emotion, "confidence": 0.7, **probs}


def blank(t: float) -> dict:
    return {"video_id": "v", "video_path": "/v/clip.mp4", "frame_index": round(t * 30), "timestamp_s": t}


def faces_frame(rows: list[dict]) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=FACES_SCHEMA).to_pandas()


# --------------------------------------------------------------------------------------------------
# Interpolation between sampled frames


def test_interpolation_between_sampled_frames():
    # Sampled every 0.2 s. Track 0 moves right and turns from happy to sad; track 1 is seen only at 0.2 s.
    rows = [face(0.0, 0, "happy", (100, 100, 50, 50)), face(0.2, 0, "sad", (120, 100, 50, 50)),
            face(0.2, 1, "angry", (300, 100, 40, 40), face_index=1), face(0.4, 0, "sad", (140, 100, 50, 50)),
            blank(0.6), face(0.8, 0, "sad")]
    interp = TrackInterpolator(faces_frame(rows))
    # On a sampled frame: exactly the row.
    exact = interp.at(0.2)
    assert [f.track_id for f in exact] == [0, 1] and not exact[0].interpolated
    np.testing.assert_allclose(exact[0].box, [120, 100, 50, 50])
    # Halfway between two rows of the same track: linear in time.
    mid = {f.track_id: f for f in interp.at(0.1)}
    np.testing.assert_allclose(mid[0].box, [110, 100, 50, 50])
    assert mid[0].probs[EMOTIONS.index("happy")] == pytest.approx(0.375) and mid[0].interpolated
    # Track 1 exists at only one neighbour: held within half an interval of it, not beyond.
    assert 1 in {f.track_id for f in interp.at(0.12)} and 1 in {f.track_id for f in interp.at(0.28)}
    assert 1 not in {f.track_id for f in interp.at(0.08)} and 1 not in {f.track_id for f in interp.at(0.32)}
    # Track 0 is missing at the sampled frame at 0.6 s: no bridging over 0.4 -> 0.8.
    assert [f.track_id for f in interp.at(0.45)] == [0]
    assert interp.at(0.55) == [] and interp.at(0.65) == []
    # Past the last sampled frame: half the median interval.
    assert [f.track_id for f in interp.at(0.89)] == [0] and interp.at(0.95) == []
    assert TrackInterpolator(faces_frame([blank(0.0)])).at(0.0) == []


def test_draw_faces_marks_the_box():
    image = np.zeros((200, 300, 3), np.uint8)
    draw_faces(image, faces_from_rows(faces_frame([face(0.0, 3, "happy", (100, 60, 80, 80))])))
    assert image[60:141, 99:102].any()  # the left edge
    assert not image[100:120, 130:150].any()  # inside the box stays clear
    assert not image[180:, :50].any()


def test_render_keeps_variable_timestamps_and_odd_sizes(tmp_path):
    """A made-up variable-frame-rate clip of odd size: every frame kept at its time, one pixel padded."""
    from fractions import Fraction

    import av

    from fer_core.overlay import render_video

    times_ms = [0, 100, 200, 350, 500, 700, 733, 766, 900, 1000]
    source = tmp_path / "odd.mkv"
    with av.open(str(source), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 65, 49, "yuv444p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((49, 65, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    rows = faces_frame([face(t / 1000, 0, "happy", (10, 10, 30, 30), frame=i) for i, t in enumerate(times_ms) if i % 3 == 0])
    stats = render_video(str(source), rows, str(tmp_path / "out.mp4"))
    assert stats.frames == len(times_ms) and stats.frames_with_faces == len(times_ms)
    with av.open(str(tmp_path / "out.mp4")) as container:
        frames = list(container.decode(video=0))
    assert [round(float(f.time) * 1000) for f in frames] == times_ms
    assert (frames[0].width, frames[0].height) == (66, 50)


# --------------------------------------------------------------------------------------------------
# The page


def videos_frame(rows: list[dict]) -> pd.DataFrame:
    return pa.Table.from_pylist([{**{n: None for n in VIDEOS_SCHEMA.names}, **r} for r in rows],
                                schema=VIDEOS_SCHEMA).to_pandas()


def test_build_report_tracks_failures_and_escaping():
    rows = [face(t / 5, 0, "happy") for t in range(20)]
    rows += [face(t / 5, track, "sad", (200 + 60 * track, 0, 40, 40), face_index=track) for track in (1, 2)
             for t in range(5 * track, 5 * track + 3)]
    rows += [{**blank(0.0), "video_id": "quiet", "video_path": "/v/quiet.mp4"}]
    videos = videos_frame([
        {"video_id": "v", "video_path": "/v/clip.mp4", "status": "ok", "duration_s": 4.0, "model": "m@1", "detector": "yunet"},
        {"video_id": "quiet", "video_path": "/v/quiet.mp4", "status": "ok", "duration_s": 1.0},
        {"video_id": "bad", "video_path": "/v/<bad>.mp4", "status": "failed", "error": "zero-byte <file> & more"},
    ])
    report = build_report(faces_frame(rows), videos, smooth_s=1.0, max_tracks=2, title="run <1>")
    page = report.html
    assert page.count("data:image/png;base64,") == 1 and len(report.pngs) == 1
    png = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)", page).group(1))
    assert png.startswith(PNG_MAGIC) and png == next(iter(report.pngs.values()))
    assert "Plotting the 2 longest of 3 tracks" in page
    assert "No faces were detected in this video." in page
    failed = re.search(r'<tr class="failed">(.*?)</tr>', page).group(1)
    assert "zero-byte &lt;file&gt; &amp; more" in failed and "&lt;bad&gt;.mp4" in failed
    assert "<bad>" not in page and "run &lt;1&gt;" in page
    assert not re.search(r'(src|href)="(http|//|file:)', page)  # self-contained


# --------------------------------------------------------------------------------------------------
# Episodes and the usable-face rule on the page


def measured(row: dict, yaw: float = 0.0, sharpness: float = 100.0, in_frame: float = 1.0) -> dict:
    """A face row with the head pose and quality the usable-face rule reads."""
    return {**row, "yaw_deg": yaw, "sharpness": sharpness, "in_frame": in_frame}


def usable_rows() -> list[dict]:
    """Video "v": track 0 happy for 3 s then sad for 2 s at 5 fps, turned away (yaw 60) at 1.0-1.4 s; video
    "w": one track whose 5 faces are all blurred."""
    rows = [measured(face(i / 5, 0, "happy" if i < 15 else "sad", frame=i), yaw=60.0 if 5 <= i <= 7 else 0.0)
            for i in range(25)]
    rows += [measured({**face(i / 5, 0, "angry", frame=i), "video_id": "w", "video_path": "/v/blurred.mp4"},
                      sharpness=1.0) for i in range(5)]
    return rows


USABLE_VIDEOS = [
    {"video_id": "v", "video_path": "/v/clip.mp4", "status": "ok", "duration_s": 5.0},
    {"video_id": "w", "video_path": "/v/blurred.mp4", "status": "ok", "duration_s": 1.0},
]


def usable_videos() -> pd.DataFrame:
    return videos_frame(USABLE_VIDEOS)


def section(page: str, name: str) -> str:
    """The part of the page about one video."""
    return page.split(f"<h2>{name}</h2>", 1)[1].split("<h2>", 1)[0]


def table_rows(part: str, after: str) -> list[list[str]]:
    """The cells of the first table after `after` in `part`."""
    body = part.split(after, 1)[1].split("</table>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>")[1])]


def test_report_with_usable_rule_shows_drops_and_episodes():
    report = build_report(faces_frame(usable_rows()), usable_videos(), smooth_s=0, usable=UsableRule())
    page = report.html
    assert report.faces_dropped == 3 + 5 and report.episodes == 2
    assert ("Usable faces only (|yaw| &lt;= 40 deg, sharpness &gt;= 40, min(w, h) &gt;= 40 px, in frame &gt;= 90%; "
            "unknown measures kept): 8 of 30 face-frames dropped.") in page
    clip = section(page, "clip.mp4")
    header = re.search(r"<thead><tr>(.*?)</tr>", clip).group(1)
    assert "<th>faces</th><th>faces_dropped</th>" in header
    summary = table_rows(clip, "</p>")[0]
    assert summary[1:5] == ["25", "88.00", "22", "3"]  # frames sampled, face_frame_%, faces, faces_dropped
    # The turned-away frames are a 0.6 s gap in track 0 (under --max-gap-s 1): one happy episode, then sad.
    assert table_rows(clip, "<h3>Episodes</h3>") == [
        ["0", "0.00", "3.00", "3.00", "happy", "0.70", "12"],
        ["0", "3.00", "5.00", "2.00", "sad", "0.70", "10"],
    ]
    assert "Episodes</h3><p class=\"note\">Stretches of at least 2 s" in clip and ": 2 in this video." in clip
    blurred = section(page, "blurred.mp4")
    assert "No usable faces in this video: the rule dropped all 5 face-frames." in blurred
    assert len(report.pngs) == 1  # nothing to plot for the blurred video


def test_report_episodes_need_min_episode_s_and_follow_gaps():
    faces = faces_frame(usable_rows())
    page = build_report(faces, usable_videos(), smooth_s=0, usable=UsableRule(), max_gap_s=0.5).html
    # The gap of 0.6 s now splits the happy stretch into 1.0 s and 1.4 s: both too short.
    assert [r[:5] for r in table_rows(section(page, "clip.mp4"), "<h3>Episodes</h3>")] == [
        ["0", "3.00", "5.00", "2.00", "sad"]]
    page = build_report(faces, usable_videos(), smooth_s=0, min_episode_s=6.0).html
    assert "ends one): none in this video." in section(page, "clip.mp4")
    with pytest.raises(ValueError, match="min_duration_s must be"):
        build_report(faces, usable_videos(), min_episode_s=-1.0)


def test_report_without_rule_and_on_older_timelines():
    faces = faces_frame(usable_rows())
    report = build_report(faces, usable_videos(), smooth_s=0)
    assert report.faces_dropped is None
    assert "All faces counted (--all-faces)" in report.html and "faces_dropped" not in report.html
    # All faces count: the turned-away frames bridge nothing, track 0 is happy for 3 s without a gap.
    assert table_rows(section(report.html, "clip.mp4"), "<h3>Episodes</h3>")[0][:4] == ["0", "0.00", "3.00", "3.00"]
    old = faces.drop(columns=list(MEASURE_COLUMNS))
    page = build_report(old, usable_videos()).html
    assert "All faces counted: these timelines have no head-pose and quality columns (yaw_deg, sharpness, in_frame;" in page
    with pytest.raises(TimelineError, match="re-run jobs/annotate.py with --overwrite"):
        build_report(old, usable_videos(), usable=UsableRule())


def _write_run(out: Path, faces: pa.Table) -> Path:
    (out / "faces").mkdir(parents=True)
    (out / "videos").mkdir()
    for vid in ("v", "w"):
        pq.write_table(faces.filter(pa.compute.equal(faces["video_id"], vid)), out / "faces" / f"{vid}.parquet")
    for row in USABLE_VIDEOS:
        pq.write_table(pa.Table.from_pylist([row], schema=VIDEOS_SCHEMA), out / "videos" / f"{row['video_id']}.parquet")
    return out


def test_report_command_usable_by_default_and_all_faces(tmp_path):
    out = _write_run(tmp_path / "run", pa.Table.from_pylist(usable_rows(), schema=FACES_SCHEMA))
    html = tmp_path / "r.html"
    r = invoke("report.py", str(out), "--html", str(html), "--smooth-s", "0")
    assert r.returncode == 0, r.stderr
    assert "2 episodes, usable faces only, 8 face-frames dropped)" in r.stdout
    assert "Usable faces only (" in html.read_text() and "<th>faces_dropped</th>" in html.read_text()
    r = invoke("report.py", str(out), "--html", str(html), "--all-faces", "--min-episode-s", "1")
    assert r.returncode == 0, r.stderr
    assert "3 episodes, all faces counted)" in r.stdout
    assert "All faces counted (--all-faces)" in html.read_text()


def test_report_command_on_older_timelines(tmp_path):
    old = pa.Table.from_pylist(usable_rows(), schema=FACES_SCHEMA).drop(list(MEASURE_COLUMNS))
    out = _write_run(tmp_path / "run", old)
    html = tmp_path / "r.html"
    r = invoke("report.py", str(out), "--html", str(html))
    assert r.returncode == 0, r.stderr
    assert "all faces counted)" in r.stdout and "have no head-pose and quality columns" in html.read_text()
    html.unlink()
    one_error(invoke("report.py", str(out), "--html", str(html), "--usable"),
              "--usable needs the columns yaw_deg, sharpness, in_frame, which these timelines lack")
    assert not html.exists()


@pytest.mark.parametrize("flags, message", [
    (["--min-episode-s", "-1"], "--min-episode-s must be >= 0 seconds, got -1.0"),
    (["--min-episode-s", "inf"], "--min-episode-s must be >= 0 seconds"),
    (["--max-gap-s", "-0.5"], "--max-gap-s must be >= 0 seconds, got -0.5"),
    (["--max-gap-s", "nan"], "--max-gap-s must be >= 0 seconds"),
])
def test_report_command_rejects_bad_episode_flags(tmp_path, flags, message):
    one_error(invoke("report.py", str(tmp_path / "run"), "--html", str(tmp_path / "r.html"), *flags), message)


# --------------------------------------------------------------------------------------------------
# The commands


@pytest.mark.parametrize("script, flags", [
    ("report.py", ["--html", "--png-dir", "--smooth-s", "--max-tracks", "--usable", "--all-faces",
                   "--min-episode-s", "--max-gap-s"]),
    ("render.py", ["--timelines", "--out", "--smooth-s", "--codec"]),
])
def test_help(script, flags):
    r = run_script(script, "--help")
    assert r.returncode == 0, r.stderr
    for flag in flags:
        assert flag in r.stdout


def _damaged_run(tmp_path: Path, damage: str) -> Path:
    out = tmp_path / "run"
    if damage == "missing":
        return out
    (out / "faces").mkdir(parents=True)
    (out / "videos").mkdir()
    if damage == "empty":
        return out
    pq.write_table(pa.Table.from_pylist([{"video_id": "v", "video_path": "/v/a.mp4", "status": "ok"}], schema=VIDEOS_SCHEMA),
                   out / "videos" / "v.parquet")
    if damage == "malformed":
        pq.write_table(pa.table({"video_id": ["v"], "score": [1.0]}), out / "faces" / "v.parquet")
    return out


@pytest.mark.parametrize("damage, message", [
    ("missing", "does not exist"),
    ("empty", "holds no Parquet files"),
    ("malformed", "does not have the schema"),
])
def test_report_errors(tmp_path, damage, message):
    out = _damaged_run(tmp_path, damage)
    one_error(invoke("report.py", str(out), "--html", str(tmp_path / "r.html")), message)
    assert not (tmp_path / "r.html").exists()
    one_error(invoke("report.py", str(out), "--smooth-s", "-1"), "--smooth-s must be >= 0")


@pytest.fixture(scope="module")
def job_out(ray_local, tmp_path_factory, videos_dir, yunet_model, tiny_checkpoint) -> Path:
    from tools_support import job_output

    return job_output(tmp_path_factory, videos_dir, yunet_model, tiny_checkpoint)


@pytest.mark.slow
def test_report_on_real_output(job_out, tmp_path):
    html = tmp_path / "report.html"
    r = run_script("report.py", str(job_out), "--html", str(html), "--png-dir", str(tmp_path / "png"))
    assert r.returncode == 0, r.stderr
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 2  # both clips have faces
    failed = re.findall(r'<tr class="failed">(.*?)</tr>', page)
    assert len(failed) == 1 and "broken.mp4" in failed[0] and "zero-byte" in failed[0]
    for name in ("posed_happy.mp4", "pyfeat_face_noface.mov"):
        assert f"<h2>{name}</h2>" in page
        assert "<h3>Episodes</h3>" in section(page, name)
    # The job records head pose and quality, so the usable-face rule is on by default and says what it dropped.
    assert "Usable faces only (" in page and "<th>faces_dropped</th>" in page
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)


@pytest.mark.slow
def test_render_real_clip(job_out, videos_dir, tmp_path):
    import av

    from fer_core.analysis import load_timelines

    source = job_out.parent / "videos" / "posed_happy.mp4"  # the path the job was given: matched by id
    out = tmp_path / "annotated.mp4"
    r = run_script("render.py", str(source), "--timelines", str(job_out), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "by file name" not in r.stderr

    def decode(path: Path) -> tuple[list[np.ndarray], float, list[float]]:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = list(container.decode(stream))
            return [f.to_ndarray(format="rgb24") for f in frames], float(stream.average_rate), [float(f.time) for f in frames]

    src_frames, src_fps, src_times = decode(source)
    out_frames, out_fps, out_times = decode(out)
    assert len(src_frames) == 150 and len(out_frames) == len(src_frames)
    assert out_frames[0].shape == src_frames[0].shape
    assert out_fps == pytest.approx(src_fps, abs=1e-6)
    np.testing.assert_allclose(out_times, src_times, atol=1e-3)
    faces, _ = load_timelines(job_out)
    rows = faces[faces.video_path.str.endswith("posed_happy.mp4")].set_index("frame_index")
    # Frame 0 is sampled; frame 3 lies between the sampled frames 0 and 6 (interpolated).
    for index in (0, 3):
        x, y, h = (int(rows.loc[0, c]) for c in ("x", "y", "h"))
        edge = (slice(y + 10, y + h - 10), slice(max(0, x - 2), x + 3))
        diff = np.abs(out_frames[index].astype(int) - src_frames[index].astype(int))
        assert diff[edge].mean() > 40, index  # the box's left edge is drawn
        assert diff[y + h // 3: y + h // 2, x + 40: x + 80].mean() < 12  # inside the face: only codec noise


@pytest.mark.slow
def test_render_errors(job_out, videos_dir, tmp_path):
    out = str(tmp_path / "o.mp4")
    one_error(invoke("render.py", str(videos_dir / "posed_sad.mp4"), "-t", str(job_out), "-o", out),
              "is not in the timelines")
    one_error(invoke("render.py", str(videos_dir / "posed_happy.mp4"), "-t", str(tmp_path / "none"), "-o", out),
              "does not exist")
    one_error(invoke("render.py", str(tmp_path / "absent.mp4"), "-t", str(job_out), "-o", out), "does not exist")
    one_error(invoke("render.py", str(job_out.parent / "videos" / "broken.mp4"), "-t", str(job_out), "-o", out),
              "marked")
    # Same name as a video of the run, matched by name (and said so), but not a video.
    (tmp_path / "elsewhere").mkdir()
    fake = tmp_path / "elsewhere" / "posed_happy.mp4"
    fake.write_bytes(b"not a video at all")
    r = invoke("render.py", str(fake), "-t", str(job_out), "-o", out)
    one_error(r, "not a readable video")
    assert "matched 'posed_happy.mp4' by file name" in r.stderr
    assert not Path(out).exists() and not list(tmp_path.glob(".o.mp4*"))
