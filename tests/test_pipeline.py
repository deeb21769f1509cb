"""Integration tests: the real annotation job on a local Ray cluster over shared videos and broken files,
read back with pandas."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fer_core.config import AnnotateOptions
from fer_core.detect import create_detector
from fer_core.labels import EMOTIONS, PROB_COLUMNS
from fer_core.measures import MEASURE_COLUMNS
from fer_core.schema import FACES_SCHEMA, VIDEOS_SCHEMA, read_run_metadata
from fer_core.video import iter_frames, list_inputs, video_id

pytestmark = pytest.mark.slow

GOOD = ["posed_happy.mp4", "pyfeat_face_noface.mov", "face_recognition_short_hamilton_clip.mp4"]


def _make_inputs(videos_dir: Path, folder: Path) -> dict[str, Path]:
    """Real shared videos plus generated broken files and odd inputs."""
    import av
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in GOOD:
        files[name] = folder / name
        shutil.copy(videos_dir / name, files[name])
    (folder / "empty.mp4").write_bytes(b"")
    files["empty.mp4"] = folder / "empty.mp4"
    (folder / "notes.mov").write_text("this is not a video\n")
    files["notes.mov"] = folder / "notes.mov"
    data = (videos_dir / "fer_woman2.mp4").read_bytes()
    # The moov atom of this file sits at its start, so a cut copy opens and then ends early.
    (folder / "truncated.mp4").write_bytes(data[: int(len(data) * 0.4)])
    files["truncated.mp4"] = folder / "truncated.mp4"
    # Audio only: a container with no video stream.
    with av.open(str(folder / "audio_only.mp4"), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    files["audio_only.mp4"] = folder / "audio_only.mp4"
    # A still image counts as a one-frame video.
    cap = cv2.VideoCapture(str(videos_dir / "posed_happy.mp4"))
    ok, frame = cap.read()
    cap.release()
    assert ok
    cv2.imwrite(str(folder / "still.jpg"), frame)
    files["still.jpg"] = folder / "still.jpg"
    return files


BROKEN = {"empty.mp4", "notes.mov", "truncated.mp4", "audio_only.mp4"}


@pytest.fixture(scope="module")
def inputs(videos_dir, tmp_path_factory) -> dict[str, Path]:
    return _make_inputs(videos_dir, tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def detector(yunet_model):
    return create_detector("yunet", str(yunet_model))


def _run(inputs, out: Path, opts: AnnotateOptions, detector, **kw):
    from fer_core.pipeline import annotate

    videos = list_inputs([str(p) for p in inputs])
    return annotate(videos, str(out), opts, detector=detector, model_bytes=None, **kw)


@pytest.fixture(scope="module")
def segmented_run(ray_local, inputs, detector, tiny_checkpoint, tmp_path_factory):
    """The job over every input with 2-second segments, so the longer clips are split."""
    out = tmp_path_factory.mktemp("run_segmented")
    opts = AnnotateOptions(fps=5, segment_s=2.0, model=str(tiny_checkpoint))
    summary = _run(inputs.values(), out, opts, detector)
    return out, summary, opts


def test_statuses_and_failures(segmented_run, inputs):
    out, summary, _ = segmented_run
    videos = pd.read_parquet(out / "videos")
    assert len(videos) == len(inputs)
    status = dict(zip(videos.video_path.map(lambda p: Path(p).name), videos.status))
    for name in inputs:
        assert status[name] == ("failed" if name in BROKEN else "ok"), name
    failed = videos[videos.status == "failed"]
    assert failed.error.str.len().gt(10).all()
    assert failed.error.str.contains("\n").sum() == 0
    reason = dict(zip(failed.video_path.map(lambda p: Path(p).name), failed.error))
    assert "zero-byte" in reason["empty.mp4"]
    assert "no video stream" in reason["audio_only.mp4"].lower() or "video" in reason["audio_only.mp4"]
    assert {r["video_path"] for r in summary.failed} == {str(inputs[n]) for n in BROKEN}
    faces = pd.read_parquet(out / "faces")
    # A failed video commits none of its rows.
    assert not set(faces.video_id) & set(failed.video_id)


def test_one_row_per_sampled_frame_with_container_timestamps(segmented_run, inputs):
    out, _, opts = segmented_run
    faces = pd.read_parquet(out / "faces")
    videos = pd.read_parquet(out / "videos").set_index("video_id")
    for name in GOOD + ["still.jpg"]:
        vid = video_id(str(inputs[name]))
        rows = faces[faces.video_id == vid]
        expected = [(f.frame_index, f.timestamp_s) for f in iter_frames(str(inputs[name]), sample_fps=opts.fps)]
        got = rows.drop_duplicates("frame_index")[["frame_index", "timestamp_s"]].to_records(index=False).tolist()
        assert [e[0] for e in expected] == [g[0] for g in got], name
        np.testing.assert_allclose([e[1] for e in expected], [g[1] for g in got], atol=1e-6)
        assert rows.timestamp_s.is_monotonic_increasing
        assert videos.loc[vid, "frames_sampled"] == len(expected)
        with_face = rows.dropna(subset=["face_index"])
        assert videos.loc[vid, "faces"] == len(with_face)
        assert videos.loc[vid, "frames_with_face"] == with_face.frame_index.nunique()


def test_face_and_noface_rows(segmented_run, inputs):
    out, _, _ = segmented_run
    faces = pd.read_parquet(out / "faces")
    noface = faces[faces.video_id == video_id(str(inputs["pyfeat_face_noface.mov"]))]
    # The clip shows a face for about 2.7 s, then an animated title: both kinds of rows exist, in order.
    has_face = noface.groupby("frame_index").face_index.apply(lambda s: s.notna().any())
    assert has_face.iloc[:5].all() and not has_face.iloc[-5:].any()
    blank = noface[noface.face_index.isna()]
    for col in ["track_id", "x", "y", "w", "h", "det_score", "emotion", "confidence", *PROB_COLUMNS, *MEASURE_COLUMNS]:
        assert blank[col].isna().all(), col
    # Several faces in one frame (audience cutaways in the Hamilton clip) get distinct indices and tracks.
    ham = faces[faces.video_id == video_id(str(inputs["face_recognition_short_hamilton_clip.mp4"]))]
    per_frame = ham.dropna(subset=["face_index"]).groupby("frame_index")
    assert per_frame.size().max() >= 2
    for _, g in per_frame:
        assert g.face_index.tolist() == list(range(len(g)))
        assert g.track_id.is_unique


def test_probabilities_and_schema(segmented_run):
    out, _, opts = segmented_run
    import pyarrow.parquet as pq

    files = sorted((out / "faces").glob("*.parquet"))
    schema = pq.read_schema(files[0])
    assert schema.remove_metadata().equals(FACES_SCHEMA.remove_metadata())
    meta = read_run_metadata(schema)
    assert meta["model"].startswith("tiny-test@")
    assert meta["detector"]["name"] == "yunet" and meta["detector"]["engine"] == "onnxruntime"  # the run says what ran it
    assert meta["options"]["detector_engine"] == "auto"
    assert meta["options"]["fps"] == opts.fps
    # The detection schedule: auto by default, with its settings.
    assert meta["options"]["detect_every"] == 0 and meta["detect_schedule"]["detect_every"] == 0
    assert meta["detect_schedule"]["auto_interval_s"] == 0.25 and meta["detect_schedule"]["window"] > 1
    assert pq.read_schema(sorted((out / "videos").glob("*.parquet"))[0]).remove_metadata().equals(VIDEOS_SCHEMA.remove_metadata())
    faces = pd.read_parquet(out / "faces").dropna(subset=["face_index"])
    probs = faces[list(PROB_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (faces.emotion == np.array(EMOTIONS)[probs.argmax(1)]).all()
    np.testing.assert_allclose(faces.confidence, probs.max(1), atol=1e-6)
    assert (faces.w > 0).all() and (faces.h > 0).all() and (faces.det_score >= 0.8).all()


def test_rerun_adds_nothing(segmented_run, inputs, detector):
    out, _, opts = segmented_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "faces").glob("*.parquet")}
    summary = _run(inputs.values(), out, opts, detector)
    ok = len(inputs) - len(BROKEN)
    assert summary.skipped == ok
    # Failed videos are tried again (and fail again); finished ones are not touched.
    assert len(summary.results) == len(BROKEN) and len(summary.failed) == len(BROKEN)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "faces").glob("*.parquet")}
    assert before == after
    assert len(pd.read_parquet(out / "videos")) == len(inputs)


def _sorted_faces(folder: Path, video_ids=None) -> pd.DataFrame:
    faces = pd.read_parquet(folder / "faces")
    if video_ids is not None:
        faces = faces[faces.video_id.isin(video_ids)]
    return faces.sort_values(["video_id", "frame_index", "face_index"]).reset_index(drop=True)


def test_segments_equal_whole_video_with_full_detection_on_every_frame(inputs, detector, tiny_checkpoint, tmp_path):
    """With --detect-every 1 nothing depends on where a segment starts: split and whole runs are equal."""
    good = [inputs[n] for n in GOOD]
    _run(good, tmp_path / "whole", AnnotateOptions(fps=5, segment_s=0, detect_every=1, model=str(tiny_checkpoint)), detector)
    _run(good, tmp_path / "split", AnnotateOptions(fps=5, segment_s=2.0, detect_every=1, model=str(tiny_checkpoint)), detector)
    whole = _sorted_faces(tmp_path / "whole")
    pd.testing.assert_frame_equal(whole, _sorted_faces(tmp_path / "split"), check_exact=False, atol=1e-5)


def test_segments_match_whole_video_where_the_schedule_allows(segmented_run, inputs, detector, tiny_checkpoint, tmp_path):
    """With the tracking-driven schedule each segment starts with a full detection where the whole video may be
    between two full detections, searching windows: there the boxes may differ by a few pixels (and with them the
    crops and probabilities), and a face the full detector would find can appear a few frames earlier in one run
    than in the other. Everything else is the same: the sampled frames, their timestamps, and nearly every face,
    at nearly the same box."""
    from fer_core.track import iou_matrix

    out, _, _ = segmented_run
    _run([inputs[n] for n in GOOD], tmp_path, AnnotateOptions(fps=5, segment_s=0, model=str(tiny_checkpoint)), detector)
    whole = _sorted_faces(tmp_path)
    split = _sorted_faces(out, set(whole.video_id))
    frames = ["video_id", "frame_index", "timestamp_s"]
    pd.testing.assert_frame_equal(whole[frames].drop_duplicates().reset_index(drop=True),
                                  split[frames].drop_duplicates().reset_index(drop=True))
    matched = total = 0
    for key, a in whole.dropna(subset=["face_index"]).groupby(["video_id", "frame_index"]):
        b = split[(split.video_id == key[0]) & (split.frame_index == key[1])].dropna(subset=["face_index"])
        total += len(a)
        if len(b):
            iou = iou_matrix(a[list("xywh")].to_numpy(float), b[list("xywh")].to_numpy(float))
            matched += int((iou.max(axis=1) >= 0.7).sum())
    assert total > 50 and matched >= 0.97 * total, (matched, total)


def test_hanging_or_slow_segment_fails_only_its_video(ray_local, videos_dir, detector, tiny_checkpoint, tmp_path):
    opts = AnnotateOptions(fps=0, segment_s=0, segment_timeout_s=1.0, model=str(tiny_checkpoint))
    summary = _run([videos_dir / "simplefr_Video_2.mp4", videos_dir / "posed_neutral.mp4"], tmp_path, opts, detector)
    by_name = {Path(r["video_path"]).name: r for r in summary.results}
    assert by_name["simplefr_Video_2.mp4"]["status"] == "failed"
    assert "timed out" in by_name["simplefr_Video_2.mp4"]["error"]
    # posed_neutral (5 s at 30 fps, every frame) may also exceed 1 s on a slow machine; it must not hang either.
    assert by_name["posed_neutral.mp4"]["status"] in ("ok", "failed")


def test_overwrite_starts_fresh(segmented_run, inputs, detector, tiny_checkpoint, tmp_path):
    opts = AnnotateOptions(fps=2, segment_s=0, model=str(tiny_checkpoint))
    _run([inputs["posed_happy.mp4"]], tmp_path, opts, detector)
    first = pd.read_parquet(tmp_path / "faces")
    summary = _run([inputs["posed_happy.mp4"]], tmp_path, opts, detector, overwrite=True)
    assert summary.skipped == 0 and len(summary.results) == 1
    pd.testing.assert_frame_equal(first, pd.read_parquet(tmp_path / "faces"))


def test_decode_workers_do_not_import_torch() -> None:
    """Every Ray worker that plans or decodes imports fer_core.pipeline to unpickle its function; torch there cost
    seconds of CPU per worker process (about 30 CPU-seconds a run on 2 cores). Only the classifier needs it."""
    import subprocess
    import sys

    code = ("import sys, fer_core.pipeline, fer_core.segment, fer_core.isolate, fer_core.video, fer_core.detect; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
