"""Classification metrics on numpy arrays, free of models and plotting: confusion matrix, per-class
precision / recall / F1, macro-F1 and calibration (expected calibration error with its reliability bins)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check_labels(y: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must lie in 0..{num_classes - 1}, got values from {y.min()} to {y.max()}")
    return y.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Returns:
        int64 (num_classes, num_classes); rows are true classes, columns predicted classes.

    Raises:
        ValueError: for arrays of different lengths or indices outside 0..num_classes-1.
    """
    y_true = _check_labels(y_true, num_classes, "y_true")
    y_pred = _check_labels(y_pred, num_classes, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} entries, y_pred {len(y_pred)}")
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class PerClass:
    """Per-class scores from a confusion matrix; a class with no predictions (or no examples) scores 0 there."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    """Number of true examples of each class."""


def precision_recall_f1(cm: np.ndarray) -> PerClass:
    """Precision, recall and F1 of every class from a confusion matrix (rows true, columns predicted)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return PerClass(precision, recall, f1, support.astype(np.int64))


def accuracy(cm: np.ndarray) -> float:
    """Share of correct predictions; 0 for an empty matrix."""
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean F1 over the classes that occur (in truth or in predictions)."""
    cm = np.asarray(cm)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    if not present.any():
        return 0.0
    return float(precision_recall_f1(cm).f1[present].mean())


@dataclass(frozen=True)
class Calibration:
    """Expected calibration error and the reliability-diagram bins it was computed from."""

    ece: float
    """Sum over bins of (bin share of samples) x |bin accuracy - bin mean confidence|."""
    bin_edges: np.ndarray
    """(n_bins + 1,) confidence bin edges, 0 to 1."""
    bin_confidence: np.ndarray
    """(n_bins,) mean top-class confidence per bin (NaN for an empty bin)."""
    bin_accuracy: np.ndarray
    """(n_bins,) accuracy per bin (NaN for an empty bin)."""
    bin_count: np.ndarray
    """(n_bins,) samples per bin."""

    def to_dict(self) -> dict:
        def clean(a: np.ndarray) -> list:
            return [None if np.isnan(v) else float(v) for v in a]

        return {
            "ece": self.ece,
            "bin_edges": [float(v) for v in self.bin_edges],
            "bin_confidence": clean(self.bin_confidence),
            "bin_accuracy": clean(self.bin_accuracy),
            "bin_count": [int(v) for v in self.bin_count],
        }


def calibration(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> Calibration:
    """Top-label calibration with equal-width confidence bins (Guo et al. 2017).

    Args:
        probs: (N, C) class probabilities.
        y_true: (N,) true class indices.
        n_bins: number of equal-width bins over [0, 1]; a confidence on an edge falls in the bin above it,
            except 1.0, which falls in the last bin.

    Raises:
        ValueError: for mismatched shapes.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {probs.shape}")
    y_true = _check_labels(y_true, probs.shape[1], "y_true")
    if len(y_true) != len(probs):
        raise ValueError(f"probs has {len(probs)} rows, y_true {len(y_true)}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64) if len(probs) else np.zeros(0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(index, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_conf = np.where(count > 0, conf_sum / count, np.nan)
        bin_acc = np.where(count > 0, acc_sum / count, np.nan)
    n = max(len(probs), 1)
    ece = float(np.sum(np.abs(acc_sum - conf_sum)) / n)
    return Calibration(ece, edges, bin_conf, bin_acc, count)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """ECE of top-label confidences over ``n_bins`` equal-width bins; see :func:`calibration`."""
    return calibration(probs, y_true, n_bins).ece


def classification_report(probs: np.ndarray, y_true: np.ndarray, classes: list[str], n_bins: int = 15) -> dict:
    """Every figure of one split as plain JSON-ready values.

    Returns:
        {"n", "accuracy", "macro_f1", "per_class": {name: {precision, recall, f1, support}},
        "confusion_matrix": rows true / columns predicted, "ece", "calibration": bins}.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs must be (N, {len(classes)}) for classes {classes}, got shape {probs.shape}")
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(y_true, pred, len(classes))
    scores = precision_recall_f1(cm)
    cal = calibration(probs, y_true, n_bins)
    return {
        "n": int(cm.sum()),
        "accuracy": accuracy(cm),
        "macro_f1": macro_f1(cm),
        "per_class": {
            name: {
                "precision": float(scores.precision[i]),
                "recall": float(scores.recall[i]),
                "f1": float(scores.f1[i]),
                "support": int(scores.support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "ece": cal.ece,
        "calibration": cal.to_dict(),
    }
