"""Tests for fer_core.detect: Detections, YuNet and Haar detectors, model file resolution (no network)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_core import detect
from fer_core.detect import (
    Detections,
    DetectorError,
    HaarDetector,
    YuNetDetector,
    create_detector,
    resolve_yunet_model,
)
from fer_core.track import iou_matrix
from fer_core.video import iter_frames


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty cache folder and no FER_YUNET_MODEL."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FER_CACHE_DIR", str(cache))
    monkeypatch.delenv("FER_YUNET_MODEL", raising=False)
    return cache


def _frame_at(shared_dir: Path, name: str, time_s: float) -> np.ndarray:
    path = shared_dir / "data" / "videos" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return next(iter_frames(str(path), sample_fps=1, start_s=time_s)).image


@pytest.fixture(scope="module")
def pexels_frame(shared_dir: Path) -> np.ndarray:
    return _frame_at(shared_dir, "pyfeat_WolfgangLanger_Pexels.mp4", 2.0)


@pytest.fixture(scope="module")
def crowd_frame(shared_dir: Path) -> np.ndarray:
    return _frame_at(shared_dir, "facenet_pytorch_crowd.mp4", 1.0)


@pytest.fixture(scope="module")
def no_face_frame(shared_dir: Path) -> np.ndarray:
    return _frame_at(shared_dir, "pyfeat_face_noface.mov", 4.0)


@pytest.fixture(scope="module")
def yunet(yunet_model: Path) -> YuNetDetector:
    return YuNetDetector(yunet_model)


def _detections(boxes: list[list[float]], scores: list[float]) -> Detections:
    return Detections.without_landmarks(np.array(boxes, dtype=np.float32), np.array(scores, dtype=np.float32))


# --------------------------------------------------------------------------------------------------
# Detections


def test_detections_shapes_and_empty() -> None:
    empty = Detections.empty()
    assert len(empty) == 0
    assert empty.boxes.shape == (0, 4) and empty.scores.shape == (0,) and empty.landmarks.shape == (0, 5, 2)
    assert empty.boxes.dtype == np.float32
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\)"):
        Detections(np.zeros((2, 3)), np.zeros(2), np.zeros((2, 5, 2)))
    with pytest.raises(ValueError, match="scores must have shape"):
        Detections(np.zeros((2, 4)), np.zeros(3), np.zeros((2, 5, 2)))
    with pytest.raises(ValueError, match="landmarks must have shape"):
        Detections(np.zeros((2, 4)), np.zeros(2), np.zeros((2, 4, 2)))


def test_detections_indexing() -> None:
    found = _detections([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], [0.9, 0.5, 0.7])
    strong = found[found.scores > 0.6]
    assert len(strong) == 2
    np.testing.assert_array_equal(strong.scores, np.array([0.9, 0.7], dtype=np.float32))
    assert len(found[1]) == 1 and found[1].boxes.shape == (1, 4)
    assert len(found[np.array([2, 0])]) == 2 and found[1:].scores[0] == pytest.approx(0.5)
    assert np.isnan(found.landmarks).all()


def test_detections_scale_and_clip() -> None:
    landmarks = np.arange(10, dtype=np.float32).reshape(1, 5, 2)
    found = Detections(np.array([[10, 20, 30, 40]]), np.array([0.9]), landmarks)
    np.testing.assert_allclose(found.scale(2.0).boxes, [[20, 40, 60, 80]])
    np.testing.assert_allclose(found.scale((2.0, 3.0)).boxes, [[20, 60, 60, 120]])
    np.testing.assert_allclose(found.scale((2.0, 3.0)).landmarks[0, 1], [4.0, 9.0])
    clipped = Detections.without_landmarks(np.array([[-5, -5, 20, 20], [90, 40, 30, 30]]), np.ones(2)).clip(100, 50)
    np.testing.assert_allclose(clipped.boxes, [[0, 0, 15, 15], [90, 40, 10, 10]])
    np.testing.assert_allclose(clipped.in_frame, [15 * 15 / 400, 10 * 10 / 900], rtol=1e-6)
    np.testing.assert_allclose(clipped[1].in_frame, [10 * 10 / 900], rtol=1e-6)  # indexing keeps it
    assert found.in_frame.tolist() == [1.0] and found.scale(2.0).in_frame.tolist() == [1.0]
    with pytest.raises(ValueError, match="in_frame must have shape"):
        Detections(np.zeros((2, 4)), np.zeros(2), np.zeros((2, 5, 2)), np.ones(3))


# --------------------------------------------------------------------------------------------------
# Detectors on real frames


def test_yunet_finds_the_one_face(yunet: YuNetDetector, pexels_frame: np.ndarray) -> None:
    found = yunet.detect(pexels_frame)
    assert len(found) == 1
    assert found.scores[0] > 0.8
    x, y, w, h = found.boxes[0]
    assert 0 <= x and 0 <= y and x + w <= 640 and y + h <= 360 and w > 100 and h > 100
    assert np.isfinite(found.landmarks).all()
    # The landmarks (eyes, nose, mouth) lie inside the face box.
    assert ((found.landmarks[0] >= [x, y]) & (found.landmarks[0] <= [x + w, y + h])).all()


def test_yunet_boxes_are_in_full_resolution(yunet: YuNetDetector, crowd_frame: np.ndarray) -> None:
    assert crowd_frame.shape == (1080, 1920, 3)
    found = yunet.detect(crowd_frame)
    assert len(found) >= 4
    assert (found.boxes[:, 0] + found.boxes[:, 2] <= 1920).all()
    assert (found.boxes[:, 1] + found.boxes[:, 3] <= 1080).all()
    assert (found.boxes[:, 0] + found.boxes[:, 2]).max() > 640  # not in the 640-px working copy's coordinates
    assert (np.diff(found.scores) <= 0).all()


def test_yunet_on_a_frame_without_faces(yunet: YuNetDetector, no_face_frame: np.ndarray) -> None:
    assert len(yunet.detect(no_face_frame)) == 0


def test_detection_scale_follows_the_input(yunet: YuNetDetector, pexels_frame: np.ndarray) -> None:
    doubled = cv2.resize(pexels_frame, (1280, 720), interpolation=cv2.INTER_LINEAR)
    small = yunet.detect(pexels_frame)
    large = yunet.detect(doubled)
    assert len(large) == 1
    assert iou_matrix(large.boxes, small.boxes * 2)[0, 0] > 0.9



def _roll(found: Detections) -> float:
    d = found.landmarks[0, 1] - found.landmarks[0, 0]
    return float(np.degrees(np.arctan2(d[1], d[0])))


def test_region_search_matches_the_full_detection(yunet: YuNetDetector, pexels_frame: np.ndarray) -> None:
    full = yunet.detect(pexels_frame)
    x, y, w, h = full.boxes[0]
    side = 2.5 * max(w, h)
    region = np.array([x + w / 2 - side / 2, y + h / 2 - side / 2, side, side])
    found = yunet.detect_region(pexels_frame, region)
    assert len(found) == 1 and iou_matrix(found.boxes, full.boxes)[0, 0] > 0.9
    # Not to the pixel: the network sees the face at another place in a smaller input.
    assert float(np.abs(found.landmarks - full.landmarks).max()) < 0.04 * w


@pytest.mark.parametrize("turn_deg", [20.0, 35.0])
def test_region_search_turned_upright_keeps_the_roll(yunet: YuNetDetector, pexels_frame: np.ndarray,
                                                     turn_deg: float) -> None:
    """Far downscaled (64 px of face), YuNet's landmarks lean towards an upright face; turned upright by the roll
    of a full detection first, the window reads that roll again, and its box and points land on the face."""
    height, width = pexels_frame.shape[:2]
    turned = cv2.warpAffine(pexels_frame, cv2.getRotationMatrix2D((width / 2, height / 2), -turn_deg, 1.0),
                            (width, height), borderMode=cv2.BORDER_REFLECT)
    full = yunet.detect(turned)
    roll = _roll(full)
    assert abs(roll - turn_deg) < 8.0, roll  # the speaker's own roll is about a degree; 35 reads 29
    x, y, w, h = full.boxes[0]
    side = 2.5 * max(w, h)
    region = np.array([x + w / 2 - side / 2, y + h / 2 - side / 2, side, side])
    upright = yunet.detect_region(turned, region, max_side=160)
    assert len(upright) == 0 or _roll(upright) < roll - 8.0  # the lean this works around (35: not found at all)
    found = yunet.detect_region(turned, region, max_side=160, roll_deg=roll)
    assert len(found) == 1 and abs(_roll(found) - roll) < 3.0, (_roll(found), roll)
    assert iou_matrix(found.boxes, full.boxes)[0, 0] > 0.75
    assert float(np.abs(found.landmarks - full.landmarks).max()) < 0.08 * w

def test_min_face_px_and_gray_input(yunet_model: Path, pexels_frame: np.ndarray) -> None:
    assert len(YuNetDetector(yunet_model, min_face_px=400).detect(pexels_frame)) == 0
    gray = cv2.cvtColor(pexels_frame, cv2.COLOR_RGB2GRAY)
    assert len(YuNetDetector(yunet_model, max_side=320).detect(gray)) == 1
    with pytest.raises(ValueError, match="RGB uint8"):
        YuNetDetector(yunet_model).detect(pexels_frame.astype(np.float32))


def test_haar_finds_the_face(pexels_frame: np.ndarray, yunet: YuNetDetector) -> None:
    found = HaarDetector().detect(pexels_frame)
    assert len(found) >= 1
    np.testing.assert_array_equal(found.scores, 1.0)
    assert np.isnan(found.landmarks).all()
    assert iou_matrix(found.boxes, yunet.detect(pexels_frame).boxes).max() > 0.3


def test_detectors_pickle_by_config(yunet_model: Path, pexels_frame: np.ndarray) -> None:
    detector = YuNetDetector(yunet_model, score_threshold=0.7)
    before = detector.detect(pexels_frame)  # builds the network (an ONNX Runtime session), which cannot be pickled
    clone = pickle.loads(pickle.dumps(detector))
    assert clone.describe() == detector.describe()
    np.testing.assert_allclose(clone.detect(pexels_frame).boxes, before.boxes)
    opencv = YuNetDetector(yunet_model, engine="opencv")
    opencv.detect(pexels_frame)  # the OpenCV net, which cannot be pickled either
    np.testing.assert_allclose(pickle.loads(pickle.dumps(opencv)).detect(pexels_frame).boxes, before.boxes, atol=0.05)
    haar = HaarDetector()
    haar.detect(pexels_frame)
    assert pickle.loads(pickle.dumps(haar)).describe() == haar.describe()


def test_describe(yunet_model: Path) -> None:
    description = YuNetDetector(yunet_model, score_threshold=0.6, max_side=480).describe()
    assert description["name"] == "yunet"
    assert description["model_file"] == "face_detection_yunet_2023mar.onnx"
    assert description["model_sha256"] == detect.YUNET_SHA256
    assert (description["score_threshold"], description["max_side"]) == (0.6, 480)
    assert HaarDetector().describe()["name"] == "haar"


# --------------------------------------------------------------------------------------------------
# Engines: ONNX Runtime and OpenCV run the same network and must give the same faces


def _same_faces(a: Detections, b: Detections) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.05)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_engines_give_the_same_faces(yunet_model: Path, shared_dir: Path) -> None:
    opencv = YuNetDetector(yunet_model, engine="opencv")
    ort = YuNetDetector(yunet_model, engine="onnxruntime")
    assert (opencv.engine, ort.engine) == ("opencv", "onnxruntime")
    seen = 0
    for name, times in (("facenet_pytorch_crowd.mp4", (0.0, 1.0)), ("pyfeat_WolfgangLanger_Pexels.mp4", (1.0, 3.0)),
                        ("pyfeat_face_noface.mov", (4.0,)), ("simplefr_Video_2.mp4", (5.0, 30.0))):
        for t in times:
            frame = _frame_at(shared_dir, name, t)
            a, b = opencv.detect(frame), ort.detect(frame)
            _same_faces(a, b)
            seen += len(a)
            for i in range(len(a)):  # the schedule's window searches, plain and turned
                x, y, w, h = a.boxes[i]
                window = np.array([x - w, y - h, 3 * w, 3 * h])
                _same_faces(opencv.detect_region(frame, window, 160), ort.detect_region(frame, window, 160))
                _same_faces(opencv.detect_region(frame, window, 160, 15.0), ort.detect_region(frame, window, 160, 15.0))
    assert seen >= 10  # the crowd's faces and the single faces all compared, not only empty frames
    for odd in ((37, 53), (300, 97)):  # sizes that are not multiples of 32: both pad the same way
        image = cv2.resize(_frame_at(shared_dir, "pyfeat_WolfgangLanger_Pexels.mp4", 2.0), odd)
        _same_faces(opencv.detect(image), ort.detect(image))


def test_engine_auto_and_describe(yunet_model: Path) -> None:
    assert YuNetDetector(yunet_model).engine == "onnxruntime"  # installed with the package
    assert YuNetDetector(yunet_model, engine="opencv").describe()["engine"] == "opencv"
    assert create_detector("haar", engine="onnxruntime").name == "haar"  # a YuNet-only option, ignored
    with pytest.raises(DetectorError, match="unknown detector engine 'tensorrt'; expected one of auto, onnxruntime"):
        YuNetDetector(yunet_model, engine="tensorrt")


def test_engine_onnxruntime_missing_names_the_fix(yunet_model: Path) -> None:
    # A Python where onnxruntime can't be imported: auto falls back to OpenCV, asking for it is a one-line error.
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from fer_core.detect import YuNetDetector, DetectorError\n"
        f"print(YuNetDetector({str(yunet_model)!r}).engine)\n"
        f"try:\n    YuNetDetector({str(yunet_model)!r}, engine='onnxruntime')\n"
        "except DetectorError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "opencv"
    assert out[1] == ("detector engine onnxruntime needs onnxruntime; pip install onnxruntime onnx, "
                      "or use --detector-engine opencv")


def test_free_size_model_is_cached_once(yunet_model: Path, _isolated_cache: Path, pexels_frame: np.ndarray) -> None:
    first = detect.free_size_model(str(yunet_model))
    assert Path(first).parent == _isolated_cache and Path(first).is_file()
    stamp = Path(first).stat().st_mtime_ns
    assert detect.free_size_model(str(yunet_model)) == first and Path(first).stat().st_mtime_ns == stamp
    assert not list(_isolated_cache.glob("*.tmp"))
    assert len(YuNetDetector(yunet_model, engine="onnxruntime").detect(pexels_frame)) == 1


def test_free_size_model_without_a_writable_cache(yunet_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  pexels_frame: np.ndarray) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FER_CACHE_DIR", str(blocker / "cache"))  # mkdir under a file fails
    model = detect.free_size_model(str(yunet_model))
    assert isinstance(model, bytes) and len(model) > 200_000
    assert len(YuNetDetector(yunet_model, engine="onnxruntime").detect(pexels_frame)) == 1


# --------------------------------------------------------------------------------------------------
# Model resolution (no network anywhere: the model ships inside the package)


def test_packaged_model_is_the_real_file() -> None:
    assert detect.PACKAGED_YUNET.stat().st_size == detect.YUNET_BYTES
    assert detect._sha256(detect.PACKAGED_YUNET) == detect.YUNET_SHA256
    notice = (detect.PACKAGED_YUNET.parent / "LICENSE").read_text()
    assert "MIT License" in notice and "Shiqi Yu" in notice and detect.YUNET_SHA256 in notice


def test_resolve_explicit_path(yunet_model: Path, tmp_path: Path) -> None:
    assert resolve_yunet_model(yunet_model) == str(yunet_model)
    with pytest.raises(DetectorError, match="not found.*--detector-model"):
        resolve_yunet_model(tmp_path / "missing.onnx")
    pointer = tmp_path / "face_detection_yunet_2023mar.onnx"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(DetectorError, match="sha256.*pass the real file"):
        resolve_yunet_model(pointer)


def test_resolve_env_then_packaged(yunet_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_YUNET_MODEL", str(yunet_model))
    assert resolve_yunet_model() == str(yunet_model)
    monkeypatch.setenv("FER_YUNET_MODEL", "/nonexistent/yunet.onnx")
    with pytest.raises(DetectorError, match="FER_YUNET_MODEL"):
        resolve_yunet_model()
    monkeypatch.delenv("FER_YUNET_MODEL")
    assert resolve_yunet_model() == str(detect.PACKAGED_YUNET)


def test_missing_packaged_model_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "PACKAGED_YUNET", tmp_path / detect.YUNET_FILENAME)
    with pytest.raises(DetectorError, match="lacks its packaged face detector.*reinstall.*--detector-model"):
        create_detector("auto")


def test_cache_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert detect.cache_dir() == tmp_path / "xdg" / "fer_core"


# --------------------------------------------------------------------------------------------------
# Factory


def test_create_detector_kinds(yunet_model: Path) -> None:
    detector = create_detector("yunet", yunet_model, score_threshold=0.5)
    assert isinstance(detector, YuNetDetector) and detector.score_threshold == 0.5
    assert isinstance(create_detector("auto", yunet_model), YuNetDetector)
    assert isinstance(create_detector("haar", min_face_px=30), HaarDetector)
    with pytest.raises(DetectorError, match="unknown detector 'mtcnn'.*auto, yunet, haar"):
        create_detector("mtcnn")


def test_auto_is_the_packaged_yunet_and_haar_only_when_asked() -> None:
    detector = create_detector("auto", score_threshold=0.9, max_side=320)
    assert isinstance(detector, YuNetDetector) and detector.model_path == str(detect.PACKAGED_YUNET)
    assert detector.max_side == 320 and detector.score_threshold == 0.9
    haar = create_detector("haar", score_threshold=0.9, max_side=320)  # YuNet-only options are ignored
    assert isinstance(haar, HaarDetector) and haar.max_side == 320


def test_yunet_with_a_wrong_model_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match="--detector-model"):
        create_detector("yunet", tmp_path / "missing.onnx")
    with pytest.raises(DetectorError, match="--detector-model"):
        YuNetDetector("/nonexistent/model.onnx")
