"""Face detection: a column-per-field `Detections` type, YuNet and Haar adapters, the packaged YuNet model.

Detectors take an RGB ``uint8`` image of shape ``(H, W, 3)`` (what `fer_core.video` yields), detect on a copy
whose longest side is at most ``max_side`` (never upscaled), and return boxes in the ORIGINAL image's pixel
coordinates, clipped to the image, without faces smaller than ``min_face_px`` full-resolution pixels.

Detector objects hold only their configuration; the OpenCV object is built on first use and dropped when
pickled, so a detector is cheap to create and can be sent to (or created inside) Ray workers. Call
`limit_threads` once per worker process when many workers share a machine.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

YUNET_FILENAME = "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
YUNET_BYTES = 232589
YUNET_ENV = "FER_YUNET_MODEL"
CACHE_ENV = "FER_CACHE_DIR"
DETECTOR_KINDS: tuple[str, ...] = ("auto", "yunet", "haar")
YUNET_ENGINES: tuple[str, ...] = ("auto", "onnxruntime", "opencv")
"""What runs YuNet's network: ONNX Runtime (the default where it is installed) or OpenCV's DNN module
(``cv2.FaceDetectorYN``). On a 2-core Xeon, one thread, a 640x640 input: 8.8 ms against 22.1 ms."""
_YUNET_STRIDES = (8, 16, 32)
HAAR_CASCADE = "haarcascade_frontalface_default.xml"

_YUNET_ONLY_OPTIONS = frozenset({"score_threshold", "nms_threshold", "top_k", "engine"})
_MAX_NETS = 32
"""YuNet networks kept per detector, one per input size (window searches use sizes in steps of `_REGION_STEP`)."""
_REGION_STEP = 32
"""Window crops are padded (right and bottom, black) to multiples of this many pixels, so only a few input sizes
occur; YuNet pads its input to multiples of 32 itself, so the padding costs nothing."""


class DetectorError(Exception):
    """A face detector cannot be created (missing or wrong model file, unknown kind)."""


# --------------------------------------------------------------------------------------------------
# Detections


def _as_float32(values: Any) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32)


@dataclass(eq=False)
class Detections:
    """Faces found in one image, one array per field, rows aligned.

    Attributes:
        boxes: ``(N, 4)`` float32 boxes ``[x, y, w, h]`` in pixels (top-left corner, width, height).
        scores: ``(N,)`` float32 detector confidences.
        landmarks: ``(N, 5, 2)`` float32 ``(x, y)`` points: right eye, left eye, nose tip, right and left mouth
            corners (YuNet's order, "right" being the subject's right); NaN when the detector gives none.
        in_frame: ``(N,)`` float32 share of each box's area inside the image before `clip` cut it to the image
            (1.0 for a box wholly inside; defaults to ones).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    in_frame: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = _as_float32(self.boxes)
        self.scores = _as_float32(self.scores)
        self.landmarks = _as_float32(self.landmarks)
        # Empty arrays arrive in any shape (np.zeros(0), cv2's empty tuples); give them (0, ...) shapes.
        if self.boxes.size == 0:
            self.boxes = self.boxes.reshape(0, 4)
        if self.landmarks.size == 0:
            self.landmarks = self.landmarks.reshape(0, 5, 2)
        count = self.boxes.shape[0] if self.boxes.ndim == 2 else -1
        self.in_frame = np.ones(max(count, 0), np.float32) if self.in_frame is None else _as_float32(self.in_frame).reshape(-1)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape (N, 4), got {self.boxes.shape}")
        if self.scores.shape != (count,):
            raise ValueError(f"scores must have shape ({count},) to match boxes, got {self.scores.shape}")
        if self.landmarks.shape != (count, 5, 2):
            raise ValueError(f"landmarks must have shape ({count}, 5, 2) to match boxes, got {self.landmarks.shape}")
        if self.in_frame.shape != (count,):
            raise ValueError(f"in_frame must have shape ({count},) to match boxes, got {self.in_frame.shape}")

    @classmethod
    def empty(cls) -> Detections:
        """No faces."""
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))

    @classmethod
    def without_landmarks(cls, boxes: np.ndarray, scores: np.ndarray) -> Detections:
        """Detections from a detector that gives no landmarks (they are set to NaN)."""
        boxes = _as_float32(boxes).reshape(-1, 4)
        return cls(boxes, scores, np.full((len(boxes), 5, 2), np.nan, dtype=np.float32))

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def __getitem__(self, index: int | slice | np.ndarray | list[int]) -> Detections:
        """Selects rows by boolean mask, integer array, slice or single integer (kept as one row)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(self.boxes[index], self.scores[index], self.landmarks[index], self.in_frame[index])

    def scale(self, factor: float | tuple[float, float]) -> Detections:
        """Multiplies boxes and landmarks by `factor`, a scalar or ``(fx, fy)``: maps detections on a resized
        image back to the original (factor = original size / resized size)."""
        fx, fy = (factor, factor) if np.isscalar(factor) else factor
        xy = np.array([fx, fy], dtype=np.float32)
        return Detections(self.boxes * np.tile(xy, 2), self.scores, self.landmarks * xy, self.in_frame)

    def shift(self, dx: float, dy: float) -> Detections:
        """Moves boxes and landmarks by ``(dx, dy)`` pixels: maps detections in a crop back to the image it was cut
        from (``(dx, dy)`` = the crop's top-left corner there)."""
        xy = np.array([dx, dy], dtype=np.float32)
        return Detections(self.boxes + np.concatenate([xy, np.zeros(2, np.float32)]), self.scores,
                          self.landmarks + xy, self.in_frame)

    def clip(self, width: int, height: int) -> Detections:
        """Clips boxes to an image of the given size, recording in `in_frame` the share of each box's area that
        was inside (landmarks are left as they are)."""
        x0 = np.clip(self.boxes[:, 0], 0, width)
        y0 = np.clip(self.boxes[:, 1], 0, height)
        x1 = np.clip(self.boxes[:, 0] + self.boxes[:, 2], 0, width)
        y1 = np.clip(self.boxes[:, 1] + self.boxes[:, 3], 0, height)
        clipped = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
        area = self.boxes[:, 2] * self.boxes[:, 3]
        inside = np.divide(clipped[:, 2] * clipped[:, 3], area, out=np.zeros_like(area), where=area > 0)
        return Detections(clipped, self.scores, self.landmarks, self.in_frame * np.clip(inside, 0.0, 1.0))


# --------------------------------------------------------------------------------------------------
# Detectors


def limit_threads(count: int = 1) -> None:
    """Caps OpenCV's worker threads in this process (call once in each Ray worker; many workers on one machine
    each running OpenCV's own thread pool fight over the cores)."""
    import cv2

    cv2.setNumThreads(count)


def _check_image(image_rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(image_rgb)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    return image


def _downscale(image: np.ndarray, ratio: float) -> tuple[np.ndarray, tuple[float, float]]:
    """The image resized by `ratio` (at most 1; INTER_AREA), and the ``(fx, fy)`` that maps its pixels back."""
    import cv2

    height, width = image.shape[:2]
    small_w, small_h = max(1, round(width * ratio)), max(1, round(height * ratio))
    small = image if ratio == 1.0 else cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
    return small, (width / small_w, height / small_h)


class FaceDetector(ABC):
    """Finds faces in RGB images.

    Attributes:
        name: Short name of the method, e.g. ``"yunet"``.
        max_side: Longest side, in pixels, of the downscaled copy the detector runs on.
        min_face_px: Faces narrower or shorter than this (full-resolution pixels) are dropped.
    """

    name: str

    def __init__(self, *, max_side: int = 640, min_face_px: float = 20) -> None:
        if max_side < 32:
            raise ValueError(f"max_side must be at least 32 pixels, got {max_side}")
        self.max_side = int(max_side)
        self.min_face_px = float(min_face_px)

    def detect(self, image_rgb: np.ndarray) -> Detections:
        """Detects faces in an RGB ``uint8`` image of shape ``(H, W, 3)`` (a 2-D grayscale image is accepted).

        Returns:
            Detections in the image's own pixel coordinates, clipped to it, sorted by decreasing score.
        """
        image = _check_image(image_rgb)
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            return Detections.empty()
        small, scale = _downscale(image, min(1.0, self.max_side / max(height, width)))
        return self._kept(self._detect_small(small).scale(scale).clip(width, height))

    def _kept(self, found: Detections) -> Detections:
        """Drops faces smaller than ``min_face_px`` and sorts the rest by decreasing score."""
        found = found[(found.boxes[:, 2] >= self.min_face_px) & (found.boxes[:, 3] >= self.min_face_px)]
        return found[np.argsort(-found.scores, kind="stable")]

    def detect_region(self, image_rgb: np.ndarray, region_xywh: np.ndarray, max_side: int | None = None,
                      roll_deg: float = 0.0) -> Detections:
        """Detects faces inside one region of an image, as `detect` does on the whole image.

        The region (``[x, y, w, h]`` pixels, clipped to the image) is cut from the full-resolution image and
        downscaled by the same factor as `detect` would downscale the whole image, so a face looks to the network
        as it does in a full detection, or further so that its longest side is at most `max_side`; boxes and
        landmarks come back in the whole image's coordinates, clipped to the image, faces smaller than
        ``min_face_px`` dropped, sorted by decreasing score. A face cut by the region's edge may come back partial
        or not at all.

        With `roll_deg` (a face's roll, clockwise on screen, e.g. from its last landmarks) the region is turned
        about its centre by that angle before the network sees it, so the face in it is upright: downscaled far,
        YuNet's landmarks lean towards an upright face (a face turned by 20 degrees read 2-6 degrees of roll at 64
        px of face, 17-19 once turned upright; `benchmarks/annotate_throughput.py`). Landmarks are turned back
        exactly; each box keeps the centre, turned back, and the size found upright (about 4% smaller at 20
        degrees than the box of a full detection of the turned face).
        """
        image = _check_image(image_rgb)
        height, width = image.shape[:2]
        if roll_deg and math.isfinite(roll_deg):
            return self._detect_turned(image, region_xywh, max_side, float(roll_deg))
        x0, y0 = (max(0, int(np.floor(v))) for v in region_xywh[:2])
        x1 = min(width, int(np.ceil(region_xywh[0] + region_xywh[2])))
        y1 = min(height, int(np.ceil(region_xywh[1] + region_xywh[3])))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return Detections.empty()
        crop = image[y0:y1, x0:x1]
        ratio = min(1.0, self.max_side / max(height, width))
        if max_side is not None:
            ratio = min(ratio, max_side / max(crop.shape[:2]))
        small, scale = _downscale(crop, ratio)
        small_h, small_w = small.shape[:2]
        padded = np.zeros((-(-small_h // _REGION_STEP) * _REGION_STEP, -(-small_w // _REGION_STEP) * _REGION_STEP, 3),
                          np.uint8)
        padded[:small_h, :small_w] = small
        return self._kept(self._detect_small(padded).scale(scale).shift(x0, y0).clip(width, height))

    def _detect_turned(self, image: np.ndarray, region_xywh: np.ndarray, max_side: int | None,
                       roll_deg: float) -> Detections:
        import cv2

        height, width = image.shape[:2]
        side = float(max(region_xywh[2], region_xywh[3]))
        cx, cy = float(region_xywh[0] + region_xywh[2] / 2), float(region_xywh[1] + region_xywh[3] / 2)
        ratio = min(1.0, self.max_side / max(height, width))
        if max_side is not None:
            ratio = min(ratio, max_side / side)
        # Downscale (INTER_AREA, as a full detection does) the part of the image the turned square covers, then
        # turn that small copy; turning the full-resolution pixels first would alias.
        radians = math.radians(roll_deg)
        half = side / 2 * (abs(math.cos(radians)) + abs(math.sin(radians)))
        x0, y0 = max(0, int(np.floor(cx - half))), max(0, int(np.floor(cy - half)))
        x1, y1 = min(width, int(np.ceil(cx + half))), min(height, int(np.ceil(cy + half)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return Detections.empty()
        small, (fx, fy) = _downscale(image[y0:y1, x0:x1], ratio)
        out = max(8, round(side * ratio))
        padded_side = -(-out // _REGION_STEP) * _REGION_STEP
        # cv2's positive angle turns counter-clockwise on screen, undoing a clockwise roll.
        turn = cv2.getRotationMatrix2D(((cx - x0) / fx, (cy - y0) / fy), roll_deg, 1.0)
        turn[:, 2] += (out / 2 - (cx - x0) / fx, out / 2 - (cy - y0) / fy)
        upright = cv2.warpAffine(small, turn, (padded_side, padded_side), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        found = self._detect_small(upright)
        if not len(found):
            return Detections.empty()
        back = cv2.invertAffineTransform(turn)
        to_image = np.array([fx, fy], np.float32), np.array([x0, y0], np.float32)

        def restore(points: np.ndarray) -> np.ndarray:
            return ((points @ back[:, :2].T.astype(np.float32) + back[:, 2].astype(np.float32)) * to_image[0]
                    + to_image[1])

        centres = restore(found.boxes[:, :2] + found.boxes[:, 2:] / 2)
        sizes = found.boxes[:, 2:] * to_image[0]
        boxes = np.concatenate([centres - sizes / 2, sizes], axis=1)
        landmarks = restore(found.landmarks.reshape(-1, 2)).reshape(-1, 5, 2)
        return self._kept(Detections(boxes, found.scores, landmarks).clip(width, height))

    @abstractmethod
    def _detect_small(self, image_rgb: np.ndarray) -> Detections:
        """Detects faces in an already-downscaled RGB image, in its own coordinates."""

    def describe(self) -> dict[str, Any]:
        """Settings to record next to the outputs (all values JSON-serializable)."""
        return {"name": self.name, "max_side": self.max_side, "min_face_px": self.min_face_px}

    def __getstate__(self) -> dict[str, Any]:
        # Native objects (OpenCV networks, ONNX Runtime sessions: keys "_cv...") cannot be pickled; they are
        # rebuilt lazily on the other side.
        return {key: value for key, value in self.__dict__.items() if not key.startswith("_cv")}

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.describe().items() if key != "name")
        return f"{type(self).__name__}({settings})"


class YuNetDetector(FaceDetector):
    """OpenCV's YuNet CNN (``cv2.FaceDetectorYN``, OpenCV >= 4.8): boxes, 5 landmarks and calibrated scores."""

    name = "yunet"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int = 640,
        min_face_px: float = 20,
        engine: str = "auto",
    ) -> None:
        """Stores the settings; the network is built on first use.

        Args:
            model_path: The ONNX file, e.g. from `resolve_yunet_model`.
            score_threshold: Faces scoring below this are dropped.
            nms_threshold: IoU above which overlapping boxes are merged by non-maximum suppression.
            top_k: Candidates kept before non-maximum suppression.
            max_side: Longest side of the downscaled copy the network sees.
            min_face_px: Faces smaller than this in full-resolution pixels are dropped.
            engine: What runs the network (`YUNET_ENGINES`): ``"onnxruntime"``, ``"opencv"`` or ``"auto"``
                (ONNX Runtime where it and ``onnx`` are installed, else OpenCV). Both give the same faces: the
                same network, and the same decoding and non-maximum suppression as ``cv2.FaceDetectorYN``.

        Raises:
            DetectorError: if `model_path` is not a file, or `engine` is unknown or not installed.
        """
        super().__init__(max_side=max_side, min_face_px=min_face_px)
        self.model_path = os.fspath(model_path)
        if not os.path.isfile(self.model_path):
            raise DetectorError(
                f"YuNet model file not found: {self.model_path!r}; pass --detector-model with the path to "
                f"{YUNET_FILENAME} or set {YUNET_ENV}"
            )
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.engine = resolve_engine(engine)
        self._cv_nets: dict[tuple[int, int], Any] = {}

    def _net(self, width: int, height: int) -> Any:
        import cv2

        # One network per input size: a window search every frame alternates between sizes, and setInputSize
        # costs as much as a full-frame detection (measured: 25 ms against 6 ms with the size unchanged).
        nets = self.__dict__.setdefault("_cv_nets", {})
        net = nets.get((width, height))
        if net is None:
            if len(nets) >= _MAX_NETS:
                nets.pop(next(iter(nets)))
            net = nets[(width, height)] = cv2.FaceDetectorYN.create(
                self.model_path, "", (width, height), self.score_threshold, self.nms_threshold, self.top_k
            )
        return net

    def _session(self) -> Any:
        """The ONNX Runtime session, built once per process, with as many threads as OpenCV is set to use
        (`limit_threads`), so one setting governs both engines."""
        session = self.__dict__.get("_cv_session")
        if session is None:
            session = self.__dict__["_cv_session"] = _onnxruntime_session(self.model_path)
        return session

    def _detect_small(self, image_rgb: np.ndarray) -> Detections:
        import cv2

        height, width = image_rgb.shape[:2]
        if self.engine == "onnxruntime":
            faces = _yunet_onnxruntime(self._session(), image_rgb, self.score_threshold, self.nms_threshold,
                                       self.top_k)
        else:
            _, faces = self._net(width, height).detect(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
        if faces is None or len(faces) == 0:
            return Detections.empty()
        # Each row: x, y, w, h, 5 landmark (x, y) pairs, score.
        return Detections(faces[:, :4], faces[:, 14], faces[:, 4:14].reshape(-1, 5, 2))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_file": os.path.basename(self.model_path),
            "model_sha256": _sha256(self.model_path),
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "top_k": self.top_k,
            "max_side": self.max_side,
            "min_face_px": self.min_face_px,
            "engine": self.engine,
        }


def resolve_engine(engine: str) -> str:
    """The YuNet engine `engine` names (``"auto"``: ONNX Runtime where it is installed, else OpenCV).

    Raises:
        DetectorError: for an unknown engine, or ``"onnxruntime"`` where ONNX Runtime or ``onnx`` is missing.
    """
    if engine not in YUNET_ENGINES:
        raise DetectorError(f"unknown detector engine {engine!r}; expected one of {', '.join(YUNET_ENGINES)}")
    if engine == "opencv":
        return engine
    import importlib.util

    for name in ("onnxruntime", "onnx"):  # found, not imported: importing onnx alone costs about 0.8 CPU-s
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken install, or a module blocked in sys.modules
            found = False
        if not found:
            if engine == "onnxruntime":
                raise DetectorError(f"detector engine onnxruntime needs {name}; pip install onnxruntime onnx, "
                                    "or use --detector-engine opencv")
            return "opencv"
    return "onnxruntime"


def free_size_model(model_path: str) -> str | bytes:
    """The YuNet file with its input's height and width made free, written once into `cache_dir` (the file fixes
    them at 640x640; the network is fully convolutional and reshapes its outputs to ``(1, -1, k)``). Cached because
    importing ``onnx`` costs about 0.8 CPU-s, which every fresh worker process would otherwise pay. Returns the
    cached file's path, or the model's bytes where the cache folder can't be written."""
    target = cache_dir() / f"yunet-free-size-{_sha256(model_path)[:16]}.onnx"
    if target.is_file():
        return str(target)
    import onnx

    model = onnx.load(model_path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in model.graph.output:
        for dim in output.type.tensor_type.shape.dim[1:2]:
            dim.dim_param = "cells"
    data = model.SerializeToString()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)  # atomic: processes deriving it at once each write the same bytes
    except OSError:
        return data
    return str(target)


def _onnxruntime_session(model_path: str) -> Any:
    """An ONNX Runtime session of the YuNet file, with a free input size (`free_size_model`)."""
    import cv2
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, cv2.getNumThreads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads leave the cores
    options.log_severity_level = 3
    return ort.InferenceSession(free_size_model(model_path), options, providers=["CPUExecutionProvider"])


def _yunet_onnxruntime(session: Any, image_rgb: np.ndarray, score_threshold: float, nms_threshold: float,
                       top_k: int) -> np.ndarray:
    """YuNet on an RGB image through ONNX Runtime: rows ``x, y, w, h, 5 landmark (x, y) pairs, score``, as
    ``cv2.FaceDetectorYN.detect`` gives them.

    As OpenCV does: the image, in BGR order and unscaled, padded at the right and bottom to multiples of 32;
    for each stride s and grid cell (col, row), score = sqrt(cls * obj) (each clipped to [0, 1]), box centre
    ((col, row) + offset) * s, size exp(log-size) * s, landmarks ((col, row) + offset) * s; then non-maximum
    suppression (``cv2.dnn.NMSBoxes``) over the faces scoring at least `score_threshold`.
    """
    import cv2

    height, width = image_rgb.shape[:2]
    pad_h, pad_w = -(-height // 32) * 32, -(-width // 32) * 32
    blob = np.zeros((1, 3, pad_h, pad_w), np.float32)
    blob[0, :, :height, :width] = image_rgb.transpose(2, 0, 1)[::-1]
    outputs = dict(zip((o.name for o in session.get_outputs()), session.run(None, {"input": blob})))
    rows = []
    for stride in _YUNET_STRIDES:
        cols = pad_w // stride
        cls, obj = outputs[f"cls_{stride}"][0, :, 0], outputs[f"obj_{stride}"][0, :, 0]
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        keep = np.flatnonzero(score >= score_threshold)
        if not len(keep):
            continue
        cell = np.stack([keep % cols, keep // cols], axis=1).astype(np.float32)
        bbox = outputs[f"bbox_{stride}"][0, keep]
        centre = (cell + bbox[:, :2]) * stride
        size = np.exp(bbox[:, 2:]) * stride
        points = (outputs[f"kps_{stride}"][0, keep].reshape(-1, 5, 2) + cell[:, None, :]) * stride
        rows.append(np.concatenate([centre - size / 2, size, points.reshape(-1, 10), score[keep, None]], axis=1))
    if not rows:
        return np.zeros((0, 15), np.float32)
    faces = np.concatenate(rows).astype(np.float32)
    chosen = cv2.dnn.NMSBoxes(faces[:, :4].tolist(), faces[:, 14].tolist(), score_threshold, nms_threshold,
                              top_k=top_k)
    return faces[np.asarray(chosen, np.int64).reshape(-1)]


class HaarDetector(FaceDetector):
    """OpenCV's Viola-Jones frontal-face Haar cascade, used only when asked for (``--detector haar``).

    The cascade has no calibrated confidence, so every detection scores 1.0, and it gives no landmarks
    (NaN). It misses profile and tilted faces and finds more false faces than YuNet.
    """

    name = "haar"

    def __init__(
        self,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        max_side: int = 640,
        min_face_px: float = 20,
    ) -> None:
        """Stores the settings; the cascade is loaded on first use.

        Args:
            scale_factor: Step between the image pyramid's scales (``detectMultiScale``'s ``scaleFactor``).
            min_neighbors: Overlapping raw hits a face needs to be kept (``minNeighbors``); higher is stricter.
            max_side: Longest side of the downscaled copy the cascade sees.
            min_face_px: Faces smaller than this in full-resolution pixels are dropped.
        """
        super().__init__(max_side=max_side, min_face_px=min_face_px)
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be greater than 1, got {scale_factor}")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self._cv_cascade: Any = None

    def _cascade(self) -> Any:
        import cv2

        if getattr(self, "_cv_cascade", None) is None:
            if not hasattr(cv2, "CascadeClassifier"):
                raise DetectorError("this OpenCV build has no CascadeClassifier; install opencv-python-headless<5")
            path = os.path.join(cv2.data.haarcascades, HAAR_CASCADE)
            cascade = cv2.CascadeClassifier(path)
            if cascade.empty():
                raise DetectorError(
                    f"cannot load the Haar cascade {path!r}; install opencv-python-headless<5, which ships it"
                )
            self._cv_cascade = cascade
        return self._cv_cascade

    def _detect_small(self, image_rgb: np.ndarray) -> Detections:
        import cv2

        gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
        rects = self._cascade().detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors
        )
        if len(rects) == 0:
            return Detections.empty()
        rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
        return Detections.without_landmarks(rects, np.ones(len(rects), dtype=np.float32))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_file": HAAR_CASCADE,
            "scale_factor": self.scale_factor,
            "min_neighbors": self.min_neighbors,
            "max_side": self.max_side,
            "min_face_px": self.min_face_px,
        }


# --------------------------------------------------------------------------------------------------
# Model files


PACKAGED_YUNET = Path(__file__).resolve().parent / "weights" / "yunet" / YUNET_FILENAME
"""The YuNet file shipped inside the package (MIT; its notice is ``LICENSE`` beside it)."""


def _sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Folder for files this package writes for later runs (a node's copy of the driver's detector model,
    fetched training data): ``$FER_CACHE_DIR``, else ``$XDG_CACHE_HOME/fer_core``, else ``~/.cache/fer_core``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fer_core"


def _checked_model(path: str, origin: str) -> str:
    """Returns `path` if it holds the YuNet 2023mar model, else raises DetectorError naming `origin`."""
    if not os.path.isfile(path):
        raise DetectorError(
            f"YuNet model not found at {path!r} ({origin}); pass --detector-model with the path of "
            f"{YUNET_FILENAME}, or unset {YUNET_ENV} to use the one shipped with fer-video"
        )
    digest = _sha256(path)
    if digest != YUNET_SHA256:
        raise DetectorError(
            f"{path!r} ({origin}) is not {YUNET_FILENAME}: sha256 {digest[:12]}..., expected "
            f"{YUNET_SHA256[:12]}... (a Git LFS pointer or another version?); pass the real file, or leave "
            f"--detector-model and {YUNET_ENV} unset to use the one shipped with fer-video"
        )
    return path


def resolve_yunet_model(path: str | os.PathLike[str] | None = None) -> str:
    """Finds the YuNet 2023mar ONNX file, with no network: `path`, else ``$FER_YUNET_MODEL``, else the copy
    shipped inside the package (`PACKAGED_YUNET`). Whichever is used must be the expected file (sha256).

    Raises:
        DetectorError: if the file found is missing or is not the expected model (the message names the fix).
    """
    if path is not None:
        return _checked_model(os.fspath(path), "given explicitly")
    if os.environ.get(YUNET_ENV):
        return _checked_model(os.environ[YUNET_ENV], f"from {YUNET_ENV}")
    if not PACKAGED_YUNET.is_file():
        raise DetectorError(
            f"this install of fer-video lacks its packaged face detector {PACKAGED_YUNET}; reinstall it "
            f"(pip install fer-video) or pass --detector-model with the path of {YUNET_FILENAME}"
        )
    return _checked_model(str(PACKAGED_YUNET), "shipped with fer-video")


def create_detector(kind: str = "auto", model_path: str | os.PathLike[str] | None = None, **options: Any) -> FaceDetector:
    """Creates a face detector.

    Args:
        kind: ``"yunet"`` (``"auto"`` is the same: the packaged YuNet unless `model_path` or ``$FER_YUNET_MODEL``
            names another copy), or ``"haar"``, used only when asked for.
        model_path: The YuNet ONNX file; None to resolve it (see `resolve_yunet_model`).
        **options: Keyword arguments of the detector's constructor (`YuNetDetector` or `HaarDetector`);
            YuNet-only options (thresholds, ``top_k``, ``engine``) are ignored for Haar.

    Raises:
        DetectorError: for an unknown `kind`, or a YuNet model file that is missing or not the expected one.
    """
    if kind not in DETECTOR_KINDS:
        raise DetectorError(f"unknown detector {kind!r}; expected one of {', '.join(DETECTOR_KINDS)}")
    if kind == "haar":
        return HaarDetector(**{key: value for key, value in options.items() if key not in _YUNET_ONLY_OPTIONS})
    return YuNetDetector(resolve_yunet_model(model_path), **options)
