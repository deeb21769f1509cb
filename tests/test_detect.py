"""Tests for fer_core.detect: Detections, YuNet and Haar detectors, model file resolution (no network)."""

from __future__ import annotations

import functools
import http.server
import pickle
import shutil
import threading
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_core import detect
from fer_core.detect import (
    Detections,
    DetectorError,
    HaarDetector,
    ModelDownloadError,
    YuNetDetector,
    create_detector,
    resolve_yunet_model,
)
from fer_core.track import iou_matrix
from fer_core.video import iter_frames


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty model cache and no FER_YUNET_MODEL."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FER_CACHE_DIR", str(cache))
    monkeypatch.delenv("FER_YUNET_MODEL", raising=False)
    return cache


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes any model download fail as it would offline."""

    def offline(url: str, target: Path) -> None:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(detect, "_download", offline)


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
    before = detector.detect(pexels_frame)  # builds the OpenCV net, which cannot be pickled
    clone = pickle.loads(pickle.dumps(detector))
    assert clone.describe() == detector.describe()
    np.testing.assert_allclose(clone.detect(pexels_frame).boxes, before.boxes)
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
# Model resolution


def test_resolve_explicit_path(yunet_model: Path, tmp_path: Path) -> None:
    assert resolve_yunet_model(yunet_model) == str(yunet_model)
    with pytest.raises(DetectorError, match="not found.*--detector-model"):
        resolve_yunet_model(tmp_path / "missing.onnx")
    pointer = tmp_path / "face_detection_yunet_2023mar.onnx"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(DetectorError, match="sha256.*download the real file"):
        resolve_yunet_model(pointer)


def test_resolve_from_env_then_cache(
    yunet_model: Path, _isolated_cache: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("FER_YUNET_MODEL", str(yunet_model))
    assert resolve_yunet_model() == str(yunet_model)
    monkeypatch.setenv("FER_YUNET_MODEL", "/nonexistent/yunet.onnx")
    with pytest.raises(DetectorError, match="FER_YUNET_MODEL"):
        resolve_yunet_model()
    monkeypatch.delenv("FER_YUNET_MODEL")
    assert resolve_yunet_model() is None  # empty cache, download fails
    assert resolve_yunet_model(download=False) is None
    _isolated_cache.mkdir(parents=True)
    shutil.copy(yunet_model, _isolated_cache / detect.YUNET_FILENAME)
    assert resolve_yunet_model() == str(_isolated_cache / detect.YUNET_FILENAME)


def test_cache_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert detect.cache_dir() == tmp_path / "xdg" / "fer_core"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture()
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """An HTTP server on 127.0.0.1 serving a temporary folder: (base URL, folder, requested paths)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (_QuietHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_verifies_and_caches(
    file_server: tuple[str, Path, list[str]], yunet_model: Path, _isolated_cache: Path
) -> None:
    base_url, root, requests = file_server
    shutil.copy(yunet_model, root / "model.onnx")
    cached = resolve_yunet_model(url=f"{base_url}/model.onnx")
    assert cached == str(_isolated_cache / detect.YUNET_FILENAME)
    assert detect._sha256(cached) == detect.YUNET_SHA256
    assert resolve_yunet_model(url=f"{base_url}/model.onnx") == cached
    assert requests == ["/model.onnx"]  # downloaded once, then read from the cache


def test_download_rejects_wrong_bytes(file_server: tuple[str, Path, list[str]], _isolated_cache: Path) -> None:
    base_url, root, _ = file_server
    (root / "pointer.onnx").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:8f23\n")
    with pytest.raises(ModelDownloadError, match="is not face_detection_yunet_2023mar.onnx"):
        resolve_yunet_model(url=f"{base_url}/pointer.onnx")
    assert list(_isolated_cache.iterdir()) == []  # no partial or wrong file left behind


def test_download_failure_returns_none(
    file_server: tuple[str, Path, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    base_url, _, _ = file_server
    assert resolve_yunet_model(url=f"{base_url}/missing.onnx") is None  # HTTP 404
    assert "could not download" in caplog.text


# --------------------------------------------------------------------------------------------------
# Factory


def test_create_detector_kinds(yunet_model: Path) -> None:
    detector = create_detector("yunet", yunet_model, score_threshold=0.5)
    assert isinstance(detector, YuNetDetector) and detector.score_threshold == 0.5
    assert isinstance(create_detector("auto", yunet_model), YuNetDetector)
    assert isinstance(create_detector("haar", min_face_px=30), HaarDetector)
    with pytest.raises(DetectorError, match="unknown detector 'mtcnn'.*auto, yunet, haar"):
        create_detector("mtcnn")


def test_auto_falls_back_to_haar(no_network: None) -> None:
    with pytest.warns(RuntimeWarning, match="falling back to the Haar cascade"):
        detector = create_detector("auto", score_threshold=0.9, max_side=320)
    assert isinstance(detector, HaarDetector) and detector.max_side == 320


def test_yunet_without_model_says_how_to_fix(no_network: None) -> None:
    with pytest.raises(DetectorError, match="--detector-model.*FER_YUNET_MODEL"):
        create_detector("yunet")
    with pytest.raises(DetectorError, match="--detector-model"):
        YuNetDetector("/nonexistent/model.onnx")


def test_auto_uses_the_cached_model(yunet_model: Path, _isolated_cache: Path, no_network: None) -> None:
    _isolated_cache.mkdir(parents=True)
    shutil.copy(yunet_model, _isolated_cache / detect.YUNET_FILENAME)
    assert isinstance(create_detector(), YuNetDetector)
