"""Tests for training.metrics: confusion matrix, precision / recall / F1, macro-F1 and calibration (ECE)."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import (
    accuracy,
    calibration,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    precision_recall_f1,
)


def test_confusion_matrix_rows_are_true_columns_predicted() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), num_classes=3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert cm.dtype == np.int64
    assert confusion_matrix(np.zeros(0, int), np.zeros(0, int), 3).sum() == 0


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        ([0, 1], [0], "y_true has 2 entries, y_pred 1"),
        ([0, 3], [0, 1], "y_true must lie in 0..2"),
        ([0, 1], [0, -1], "y_pred must lie in 0..2"),
        ([[0, 1]], [[0, 1]], "1-D array"),
    ],
)
def test_confusion_matrix_rejects_bad_input(y_true: list, y_pred: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(y_true), np.array(y_pred), num_classes=3)


def test_precision_recall_f1_by_hand() -> None:
    # class 0: tp 1, predicted 2, support 2 -> p 0.5, r 0.5; class 1: tp 1, predicted 2, support 1 -> p 0.5, r 1;
    # class 2: tp 2, predicted 2, support 3 -> p 1, r 2/3.
    cm = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    scores = precision_recall_f1(cm)
    np.testing.assert_allclose(scores.precision, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(scores.recall, [0.5, 1.0, 2 / 3])
    np.testing.assert_allclose(scores.f1, [0.5, 2 / 3, 0.8])
    np.testing.assert_array_equal(scores.support, [2, 1, 3])
    assert accuracy(cm) == pytest.approx(4 / 6)
    assert macro_f1(cm) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)


def test_never_predicted_class_scores_zero_and_absent_class_is_left_out_of_macro_f1() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), num_classes=3)
    scores = precision_recall_f1(cm)
    assert scores.precision[1] == 0 and scores.recall[1] == 0 and scores.f1[1] == 0
    # class 2 appears neither in truth nor predictions: averaged over classes 0 and 1 only (as scikit-learn).
    assert macro_f1(cm) == pytest.approx((2 * 0.5 * 1.0 / 1.5 + 0.0) / 2)
    assert accuracy(np.zeros((3, 3))) == 0.0 and macro_f1(np.zeros((3, 3))) == 0.0


def test_perfect_predictions() -> None:
    y = np.array([0, 1, 2, 2, 1])
    cm = confusion_matrix(y, y, 3)
    assert accuracy(cm) == 1.0 and macro_f1(cm) == 1.0


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # 10 faces at confidence 0.8, 8 of them right: perfectly calibrated.
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_by_hand_over_two_bins() -> None:
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 0])
    # Bin of 0.95 (2 faces): accuracy 0.5, gap 0.45. Bin of 0.6 (2 faces): accuracy 0.5, gap 0.1.
    cal = calibration(probs, labels, n_bins=15)
    assert cal.ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.1)
    assert cal.bin_count.sum() == 4 and len(cal.bin_edges) == 16
    filled = cal.bin_count > 0
    np.testing.assert_allclose(cal.bin_confidence[filled], [0.6, 0.95])
    np.testing.assert_allclose(cal.bin_accuracy[filled], [0.5, 0.5])
    assert np.isnan(cal.bin_accuracy[~filled]).all()


def test_confidence_of_one_falls_in_last_bin_and_to_dict_is_json_ready() -> None:
    cal = calibration(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), n_bins=15)
    assert cal.bin_count[-1] == 2 and cal.ece == pytest.approx(0.0)
    d = cal.to_dict()
    assert d["bin_accuracy"][0] is None and d["bin_accuracy"][-1] == 1.0
    assert d["bin_count"][-1] == 2


def test_ece_of_overconfident_wrong_model_is_large() -> None:
    probs = np.tile([0.99, 0.01], (100, 1))
    assert expected_calibration_error(probs, np.ones(100, dtype=int)) == pytest.approx(0.99)


def test_calibration_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="rows"):
        calibration(np.full((3, 2), 0.5), np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        calibration(np.full(3, 0.5), np.zeros(3, dtype=int))


def test_classification_report_has_every_figure() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=50)
    labels = rng.integers(0, 3, size=50)
    report = classification_report(probs, labels, ["a", "b", "c"])
    assert report["n"] == 50
    assert set(report["per_class"]) == {"a", "b", "c"}
    assert sum(r["support"] for r in report["per_class"].values()) == 50
    assert np.array(report["confusion_matrix"]).sum() == 50
    assert report["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert 0 <= report["ece"] <= 1 and len(report["calibration"]["bin_count"]) == 15
    with pytest.raises(ValueError, match="classes"):
        classification_report(probs, labels, ["a", "b"])
