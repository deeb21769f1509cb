"""fer_core.live and jobs/live.py with a shared video file as the source (no camera, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fer_core.labels import EMOTIONS, PROB_COLUMNS
from fer_core.live import FrameAnnotator, Preview, RowWriter, SourceError, iter_source, open_capture, parse_source
from fer_core.schema import FACES_SCHEMA
from fer_core.video import iter_frames, video_id
from tools_support import invoke, one_error, run_script

@pytest.fixture(scope="module")
def clip(videos_dir) -> Path:
    return videos_dir / "posed_happy.mp4"


@pytest.fixture(scope="module")
def annotator_parts(yunet_model, tiny_checkpoint):
    from fer_core.checkpoint import load_classifier
    from fer_core.detect import create_detector

    return create_detector("yunet", str(yunet_model)), load_classifier(tiny_checkpoint, device="cpu")


def test_help():
    r = run_script("live.py", "--help")
    assert r.returncode == 0, r.stderr
    for flag in ("--model", "--detector", "--out", "--max-frames", "--fps", "--show", "--no-show"):
        assert flag in r.stdout


def test_parse_source(clip, tmp_path):
    assert parse_source("0").kind == "camera" and parse_source("0").target == 0
    stream = parse_source("rtsp://cam.local/live")
    assert stream.kind == "stream" and stream.live and stream.video_id == video_id("rtsp://cam.local/live")
    file = parse_source(str(clip))
    assert file.kind == "file" and not file.live and file.video_id == video_id(str(clip))  # as the job names it
    for bad in (str(tmp_path / "absent.mp4"), "ftp://host/x.mp4", str(tmp_path)):
        with pytest.raises(SourceError):
            parse_source(bad)


def test_annotator_matches_the_job_pieces(clip, annotator_parts):
    """The live path gives the rows the job's decode + classify stages give for the same frames."""
    from fer_core.config import AnnotateOptions
    from fer_core.segment import KIND_FACE, SegmentTask, process_segment

    detector, classifier = annotator_parts
    annotator = FrameAnnotator(detector, classifier, video_id="v", video_path=str(clip))
    rows = []
    for frame in iter_frames(str(clip), sample_fps=5, end_s=1.0):
        rows += annotator.annotate(frame.image, frame.frame_index, frame.timestamp_s)
    assert [r["frame_index"] for r in rows] == [0, 6, 12, 18, 24]
    assert all(set(r) == set(FACES_SCHEMA.names) for r in rows)

    task = SegmentTask("v", str(clip), 0, 1, 0.0, 1.0)
    # Live mode runs the full detector on every frame: compare with the job at --detect-every 1.
    batches = list(process_segment(task, AnnotateOptions(fps=5, detect_every=1), detector, classifier.meta.preprocessing))
    faces = []
    for b in batches:  # what fer_core.pipeline.classify_batch does to each batch, without importing Ray
        index = np.flatnonzero(b["kind"] == KIND_FACE)
        probs = classifier.predict_proba(b["crop"][index])
        faces += [(int(b["frame_index"][i]), probs[j], [int(b[k][i]) for k in "xywh"]) for j, i in enumerate(index)]
    assert [f[0] for f in faces] == [r["frame_index"] for r in rows]
    for (_, probs, box), row in zip(faces, rows):
        np.testing.assert_allclose([row[c] for c in PROB_COLUMNS], probs, atol=1e-5)
        assert [row[k] for k in "xywh"] == box


def test_blank_frame_and_tracks(annotator_parts):
    detector, classifier = annotator_parts
    annotator = FrameAnnotator(detector, classifier, video_id="v", video_path="v")
    rows = annotator.annotate(np.zeros((120, 160, 3), np.uint8), 0, 0.0)
    assert len(rows) == 1 and rows[0]["face_index"] is None and rows[0]["p_happy"] is None
    assert rows[0]["frame_index"] == 0 and rows[0]["timestamp_s"] == 0.0


def test_iter_source_samples_a_file_like_the_job(clip):
    source = parse_source(str(clip))
    capture = open_capture(source)
    try:
        got = [(i, t) for i, t, rgb in iter_source(capture, source, sample_fps=5, max_frames=5)]
    finally:
        capture.release()
    expected = [(f.frame_index, f.timestamp_s) for f in iter_frames(str(clip), sample_fps=5, end_s=1.0)]
    assert [g[0] for g in got] == [e[0] for e in expected]
    np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], atol=1e-3)


def test_source_without_frames():
    class Dead:
        def read(self):
            return False, None

    with pytest.raises(SourceError, match="gave no frame"):
        next(iter_source(Dead(), parse_source("rtsp://cam.local/live")))


def test_row_writer_csv_and_bad_suffix(tmp_path):
    import pyarrow.csv as pacsv

    row = {"video_id": "v", "video_path": "v", "frame_index": 0, "timestamp_s": 0.0, "face_index": 0,
           "track_id": 0, "x": 1, "y": 2, "w": 3, "h": 4, "det_score": 0.9, "emotion": "sad", "confidence": 0.4,
           **{c: 0.1 for c in PROB_COLUMNS}}
    writer = RowWriter(str(tmp_path / "rows.csv"))
    writer.write([row, {**{n: None for n in FACES_SCHEMA.names}, "video_id": "v", "video_path": "v",
                        "frame_index": 1, "timestamp_s": 0.2}])
    writer.close()
    table = pacsv.read_csv(tmp_path / "rows.csv")
    assert table.column_names == FACES_SCHEMA.names and table.num_rows == 2
    with pytest.raises(ValueError, match=".parquet or .csv"):
        RowWriter(str(tmp_path / "rows.json"))


def test_preview_without_display_or_gui(monkeypatch):
    import cv2

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not Preview(True).active and Preview(True).note == ""
    assert "no display" in Preview(True, explain=True).note
    monkeypatch.setenv("DISPLAY", ":99")
    preview = Preview(True)
    if "GTK" in cv2.getBuildInformation() or "QT" in cv2.getBuildInformation().split("GUI")[-1][:300]:
        pytest.skip("this OpenCV build has a GUI")
    assert preview.show(np.zeros((32, 32, 3), np.uint8), []) is True  # headless OpenCV: no crash, goes on
    assert not preview.active and "opencv-python-headless" in preview.note


@pytest.mark.slow
def test_live_cli_on_a_video_file(clip, yunet_model, tiny_checkpoint, tmp_path):
    out = tmp_path / "rows.parquet"
    r = invoke("live.py", str(clip), "--model", str(tiny_checkpoint), "--detector", "yunet", "--detector-model",
                 str(yunet_model), "--max-frames", "30", "--fps", "0", "--out", str(out), "--no-show")
    assert r.returncode == 0, r.stderr
    assert "30 frames" in r.stderr
    table = pq.read_table(out)
    assert table.schema.remove_metadata().equals(FACES_SCHEMA.remove_metadata())
    rows = table.to_pandas()
    assert rows.frame_index.drop_duplicates().tolist() == list(range(30))
    assert rows.timestamp_s.is_monotonic_increasing
    assert (rows.video_id == video_id(str(clip))).all()
    found = rows.dropna(subset=["face_index"])
    assert len(found) >= 25 and (found.track_id == 0).all()  # one face, one track
    probs = found[list(PROB_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (found.emotion == np.array(EMOTIONS)[probs.argmax(1)]).all()
    # Without --out: CSV on stdout, header first, one line per row.
    r = invoke("live.py", str(clip), "--model", str(tiny_checkpoint), "--detector", "yunet", "--detector-model",
               str(yunet_model), "--max-frames", "3", "--fps", "0", "--no-show")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].replace('"', "").split(",") == FACES_SCHEMA.names and len(lines) == 4


@pytest.mark.parametrize("source, message", [
    ("{tmp}/absent.mp4", "is not a camera index, a stream URL or an existing video file"),
    ("{tmp}/notes.mp4", "cannot open video file"),
    ("ftp://host/x.mp4", "unsupported source"),
])
def test_bad_source_one_line_error(tmp_path, source, message):
    (tmp_path / "notes.mp4").write_text("not a video\n")
    one_error(invoke("live.py", source.replace("{tmp}", str(tmp_path)), "--no-show"), message)


@pytest.mark.parametrize("args, message", [
    (["--fps", "-2"], "--fps must be >= 0"),
    (["--detector", "mtcnn"], "--detector must be one of"),
    (["--out", "rows.json"], "--out must end in .parquet or .csv"),
    (["--model", "/no/such/model", "--no-show"], "does not exist"),
])
def test_bad_option_one_line_error(clip, args, message):
    one_error(invoke("live.py", str(clip), *args), message)
