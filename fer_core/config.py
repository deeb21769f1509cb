"""Typed options of the annotation job, validated at construction with messages naming the flag."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

DETECTORS = ("auto", "yunet", "haar")
DETECTOR_ENGINES = ("auto", "onnxruntime", "opencv")
DECODERS = ("auto", "decord", "pyav")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
DEVICES = ("auto", "cpu", "gpu")


class OptionError(ValueError):
    """An option value is invalid; the message names the command-line flag."""


@dataclass(frozen=True)
class AnnotateOptions:
    """Everything that shapes an annotation run (recorded in the output files' metadata)."""

    fps: float = 5.0
    """Frames sampled per second of video (0 = every frame)."""
    detector: str = "auto"
    """Face detector: auto or yunet (YuNet, shipped with the package), or haar (only when asked for)."""
    detector_model: str | None = None
    """Path of the YuNet ONNX (else FER_YUNET_MODEL, else the copy shipped inside the package)."""
    detector_engine: str = "auto"
    """What runs YuNet: auto (ONNX Runtime where installed, else OpenCV), onnxruntime or opencv; the same faces."""
    detect_max_side: int = 640
    """Frames are downscaled to at most this longest side for detection; boxes map back to full resolution."""
    detect_every: int = 0
    """Full-frame face detection on every k-th sampled frame at least, a window around each tracked face in
    between (fer_core.schedule); 1 = the full detector on every sampled frame, 0 = auto (every 0.25 s of video)."""
    min_face_px: int = 20
    """Faces smaller than this (in original-frame pixels) are ignored."""
    score_threshold: float = 0.8
    """Minimum detector score (YuNet)."""
    decoder: str = "auto"
    """Video decoder: auto (PyAV, decord where PyAV can't read a file), decord or pyav."""
    segment_s: float = 120.0
    """Videos longer than this are split into segments of this many seconds processed in parallel (0 = never)."""
    segment_timeout_s: float = 600.0
    """A segment whose decoding and detection take longer than this is stopped and its video marked failed."""
    model: str | None = None
    """Classifier checkpoint folder (default: the model shipped in the package)."""
    batch_size: int = 256
    """Face crops per classifier batch."""
    device: str = "auto"
    """Where the classifier runs: auto (GPUs when the cluster has them), cpu or gpu."""
    precision: str = "auto"
    """Classifier arithmetic: auto (bf16 on GPUs and on CPUs with native bf16, else fp32), fp32 or bf16."""
    classifier_actors: int = 0
    """Classifier actors (0 = one per GPU, or one per 8 CPUs with at least one on CPU-only clusters)."""
    classifier_cpus: float = 0.5
    """CPUs reserved by each CPU classifier actor (fractional, so decode tasks keep the cores)."""
    track_iou: float = 0.3
    """IoU needed to continue a face track between sampled frames."""
    track_max_age_s: float = 1.0
    """A track unmatched for longer than this ends; the face gets a new track id."""
    track_max_shift: float = 0.5
    """Where the IoU falls short, a face still continues a track of about its size whose centre is within this
    many of its box's larger sides (fast motion between sampled frames); 0 = IoU only."""
    decode_labels: tuple[str, ...] = ()
    """Ray node labels (KEY=VALUE) the decode + detect tasks must run on, e.g. a CPU worker group."""
    classify_labels: tuple[str, ...] = ()
    """Ray node labels (KEY=VALUE) the classifier actors must run on, e.g. a GPU worker group."""

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.fps >= 0, "--fps", "must be >= 0 (0 = every frame)"),
            (self.detector in DETECTORS, "--detector", f"must be one of {', '.join(DETECTORS)}"),
            (self.detector_engine in DETECTOR_ENGINES, "--detector-engine", f"must be one of {', '.join(DETECTOR_ENGINES)}"),
            (self.decoder in DECODERS, "--decoder", f"must be one of {', '.join(DECODERS)}"),
            (self.device in DEVICES, "--device", f"must be one of {', '.join(DEVICES)}"),
            (self.precision in PRECISIONS, "--precision", f"must be one of {', '.join(PRECISIONS)}"),
            (not (self.precision == "int8" and self.device == "gpu"), "--precision",
             "int8 runs on the CPU only; use bf16 or fp32 with --device gpu"),
            (self.detect_max_side >= 64, "--detect-max-side", "must be >= 64"),
            (self.min_face_px >= 1, "--min-face-px", "must be >= 1"),
            (self.detect_every >= 0, "--detect-every", "must be >= 0 (1 = full detection on every sampled frame, 0 = auto)"),
            (0 < self.score_threshold < 1, "--score-threshold", "must be in (0, 1)"),
            (self.segment_s >= 0, "--segment-s", "must be >= 0 (0 = no splitting)"),
            (self.segment_timeout_s > 0, "--segment-timeout-s", "must be > 0"),
            (self.batch_size >= 1, "--batch-size", "must be >= 1"),
            (self.classifier_actors >= 0, "--classifier-actors", "must be >= 0"),
            (0 < self.classifier_cpus <= 64, "--classifier-cpus", "must be in (0, 64]"),
            (0 < self.track_iou < 1, "--track-iou", "must be in (0, 1)"),
            (self.track_max_age_s >= 0, "--track-max-age-s", "must be >= 0"),
            (0 <= self.track_max_shift < 1, "--track-max-shift", "must be in [0, 1) (box sides; 0 = IoU only)"),
        ]
        for flag, labels in (("--decode-label", self.decode_labels), ("--classify-label", self.classify_labels)):
            for label in labels:
                key, sep, value = label.partition("=")
                checks.append((bool(sep and key.strip() and value.strip()), flag, f"expects KEY=VALUE, got {label!r}; e.g. {flag} node-role=gpu"))
        for ok, flag, msg in checks:
            if not ok:
                if flag.endswith("-label"):
                    raise OptionError(f"{flag} {msg}")
                value = getattr(self, flag[2:].replace("-", "_"))
                raise OptionError(f"{flag} {msg}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_labels(labels: tuple[str, ...]) -> dict[str, str]:
    """``("a=b", "c=d")`` -> ``{"a": "b", "c": "d"}`` (validated by AnnotateOptions)."""
    return {k.strip(): v.strip() for k, _, v in (label.partition("=") for label in labels)}
