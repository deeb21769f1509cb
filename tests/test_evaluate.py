"""Tests for training/evaluate.py on a tiny data set made in tmp: metrics.json, figures, TTA modes, CLI errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fer_core.checkpoint import load_classifier
from training.data import FERPLUS_COLUMNS
from training.evaluate import EvaluationError, app, evaluate, predict_proba_tta, read_history, tencrop_windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_PER_SPLIT = 21


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """fer2013_test.npz with PublicTest and PrivateTest rows (rows 0..41), a train npz, and FERPlus votes."""
    folder = tmp_path_factory.mktemp("fer")
    rng = np.random.default_rng(0)
    n = 2 * N_PER_SPLIT
    np.savez(folder / "fer2013_test.npz", pixels=rng.integers(0, 256, (n, 48, 48), dtype=np.uint8),
             emotion=np.arange(n, dtype=np.uint8) % 7, usage=np.repeat([1, 2], N_PER_SPLIT).astype(np.uint8),
             row=np.arange(n) + 3)
    np.savez(folder / "fer2013_train.npz", pixels=np.zeros((3, 48, 48), np.uint8), emotion=np.zeros(3, np.uint8),
             usage=np.zeros(3, np.uint8), row=np.arange(3))
    with (folder / "fer2013new.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Usage", "Image name", *FERPLUS_COLUMNS])
        for i in range(n + 3):
            votes = [0] * 10
            votes[i % 10] = 10  # columns 7..9 (contempt, unknown, NF): left out of the FERPlus accuracy
            writer.writerow(["x", f"fer{i:07d}.png", *votes])
    return folder


@pytest.fixture(scope="module")
def history_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "metrics.jsonl"
    records = [{"epoch": e, "train_loss": 2 - e / 10, "train_accuracy": 0.2 + e / 20, "public_accuracy": 0.25 + e / 20,
                "public_accuracy_flip": 0.26 + e / 20, "lr": 0.1 / (e + 1)} for e in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_evaluate_writes_every_figure(tiny_checkpoint: Path, tiny_data: Path, history_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = evaluate(tiny_checkpoint, tiny_data, out, ferplus=tiny_data / "fer2013new.csv", metrics_file=history_file,
                      throughput_seconds=0.2)
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert result["tta"] == "none" and result["tta_option"] == "checkpoint"  # tiny_checkpoint records tta none
    assert set(result["splits"]) == {"PublicTest", "PrivateTest"}
    for split, r in result["splits"].items():
        assert r["n"] == N_PER_SPLIT
        assert set(r["per_class"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
        assert np.array(r["confusion_matrix"]).sum() == N_PER_SPLIT
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 and 0 <= r["ece"] <= 1
        assert len(r["calibration"]["bin_count"]) == 15
        # Rows 3.. carry votes cycling over the 10 columns; 3 in 10 are contempt / unknown / NF.
        assert r["ferplus"]["n"] + r["ferplus"]["left_out"] == N_PER_SPLIT and r["ferplus"]["left_out"] > 0
        for name in r["figures"].values():
            assert (out / name).stat().st_size > 1000 and name.startswith(split)
    assert result["training"]["epochs"] == 3 and (out / "training_curves.png").is_file()
    t = result["throughput"]
    assert t["faces_per_s"] > 0 and t["batch_size"] == 64 and t["threads"] == 1 and t["tta"] == "none"


def test_ferplus_accuracy_uses_the_majority_vote(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    result = evaluate(tiny_checkpoint, tiny_data, tmp_path, ferplus=tiny_data / "fer2013new.csv", splits=["PublicTest"],
                      throughput_seconds=0, figures=False)
    clf = load_classifier(tiny_checkpoint, device="cpu")
    from training.data import ferplus_majority, load_fer, load_ferplus_votes

    part = load_fer(tiny_data, splits=["PublicTest"])
    majority = ferplus_majority(load_ferplus_votes(tiny_data / "fer2013new.csv", part.row))
    keep = majority >= 0
    expected = float((clf.predict_proba(part.pixels).argmax(1)[keep] == majority[keep]).mean())
    assert result["splits"]["PublicTest"]["ferplus"]["accuracy"] == pytest.approx(expected)
    assert "throughput" not in result and "training" not in result


def test_metrics_file_next_to_the_model_is_found(tiny_checkpoint: Path, tiny_data: Path, history_file: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run / "model")
    shutil.copy(history_file, run / "metrics.jsonl")
    result = evaluate(run / "model", tiny_data, tmp_path / "eval", splits=["PublicTest"], limit=5, throughput_seconds=0,
                      figures=False)
    assert "figure" not in result["training"] and not list((tmp_path / "eval").glob("*.png"))
    assert result["training"]["epochs"] == 3 and result["splits"]["PublicTest"]["n"] == 5


def test_tencrop_windows_are_corners_and_centre() -> None:
    windows = tencrop_windows(48, 48)
    assert len(windows) == 5 and all(h == w == 44 for _, _, h, w in windows)
    assert {(y, x) for y, x, _, _ in windows} == {(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)}


@pytest.mark.parametrize("tta", ["none", "flip", "tencrop"])
def test_tta_modes_give_probabilities(tiny_checkpoint: Path, tta: str) -> None:
    clf = load_classifier(tiny_checkpoint, device="cpu")
    faces = np.random.default_rng(1).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    probs = predict_proba_tta(clf, faces, tta)
    assert probs.shape == (4, 7)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    symmetric = np.concatenate([faces[:, :, :24], faces[:, :, :24][:, :, ::-1]], axis=2)
    if tta == "flip":  # a mirror-symmetric face gives the same answer with and without flip
        np.testing.assert_allclose(predict_proba_tta(clf, symmetric, "flip"), predict_proba_tta(clf, symmetric, "none"),
                                   atol=1e-6)
    assert clf.meta.tta == "none"  # the classifier itself is left as it was


def test_tta_from_the_checkpoint_can_be_overridden(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    result = evaluate(tiny_checkpoint, tiny_data, tmp_path, tta="tencrop", splits=["PrivateTest"], limit=4,
                      throughput_seconds=0, figures=False)
    assert result["tta"] == "tencrop" and list(result["splits"]) == ["PrivateTest"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"tta": "mirror"}, EvaluationError, "--tta must be one of checkpoint, none, flip, tencrop"),
        ({"splits": ["Validation"]}, EvaluationError, "--splits takes a comma-separated subset"),
        ({"splits": ["Training"]}, Exception, "no rows of the splits Training|no Training rows"),
        ({"limit": -1}, EvaluationError, "--limit must be >= 0"),
        ({"device": "tpu"}, EvaluationError, "--device must be auto, cpu or cuda"),
        ({"metrics_file": "missing.jsonl"}, EvaluationError, "metrics file .* not found"),
        ({"ferplus": "missing.csv"}, Exception, "FERPlus votes not found"),
    ],
)
def test_bad_options_raise(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path, kwargs: dict, error: type, message: str) -> None:
    if kwargs.get("splits") == ["Training"]:
        (tiny_data / "fer2013_train.npz").rename(tmp_path / "hidden.npz")  # leave no Training rows at all
    try:
        with pytest.raises(error, match=message):
            evaluate(tiny_checkpoint, tiny_data, tmp_path / "eval", throughput_seconds=0, **kwargs)
    finally:
        if (tmp_path / "hidden.npz").exists():
            (tmp_path / "hidden.npz").rename(tiny_data / "fer2013_train.npz")


def test_read_history_rejects_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n\n[1, 2]\n')
    with pytest.raises(EvaluationError, match="line 3: expected a JSON object"):
        read_history(path)
    path.write_text('{"epoch": 0}\n{oops\n')
    with pytest.raises(EvaluationError, match="line 2 is not JSON"):
        read_history(path)


def test_cli_prints_summary_or_one_error_line(tiny_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    help_result = runner.invoke(app, ["--help"])
    assert help_result.exit_code == 0 and "--tta" in help_result.output and "--limit" in help_result.output

    ok = runner.invoke(app, [str(tiny_checkpoint), "--data", str(tiny_data), "--out", str(tmp_path / "e"),
                             "--splits", "PublicTest", "--limit", "6", "--throughput-seconds", "0.1",
                             "--no-figures"])
    assert ok.exit_code == 0, ok.output
    assert "PublicTest: accuracy" in ok.output and "CPU throughput" in ok.output and "metrics.json" in ok.output

    for args, message in [
        (["--tta", "mirror"], "error: --tta must be one of"),
        (["--splits", "Public"], "error: --splits takes"),
        (["--data", str(tmp_path / "none")], "error: FER-2013 data not found"),
    ]:
        bad = runner.invoke(app, [str(tiny_checkpoint), "--data", str(tiny_data), "--out", str(tmp_path / "e"), *args])
        assert bad.exit_code == 1
        lines = bad.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), bad.output
    missing = runner.invoke(app, [str(tmp_path / "nomodel"), "--data", str(tiny_data), "--out", str(tmp_path / "e")])
    assert missing.exit_code == 1 and missing.output.startswith("error: checkpoint")
