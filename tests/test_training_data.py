"""Tests for training.data: FER-2013 as csv, Kaggle image folders and npz; FERPlus votes; helpful errors."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_core.labels import EMOTIONS
from training.data import (
    FERPLUS_COLUMNS,
    DataError,
    check_source,
    ferplus_majority,
    ferplus_soft_targets,
    load_fer,
    load_ferplus_votes,
)

ANGRY, DISGUST, FEAR, HAPPY, SAD, SURPRISE, NEUTRAL = range(7)


def _face(value: int) -> np.ndarray:
    """A 48x48 face of one grey level, so each row is recognisable after a round trip (even through JPEG)."""
    return np.full((48, 48), value, dtype=np.uint8)


def _write_csv(path: Path, rows: list[tuple[int, np.ndarray, str]], columns: tuple[str, ...] = ("emotion", "pixels", "Usage")) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for emotion, pixels, usage in rows:
            writer.writerow([emotion, " ".join(map(str, pixels.ravel())), usage])
    return path


@pytest.fixture
def fer_csv(tmp_path: Path) -> Path:
    rows = [(HAPPY, _face(10), "Training"), (SAD, _face(20), "Training"), (FEAR, _face(30), "PublicTest"),
            (NEUTRAL, _face(40), "PrivateTest")]
    return _write_csv(tmp_path / "fer2013.csv", rows)


def test_csv_form(fer_csv: Path) -> None:
    for path in (fer_csv, fer_csv.parent):
        data = load_fer(path)
        assert data.pixels.shape == (4, 48, 48) and data.pixels.dtype == np.uint8
        assert data.labels.tolist() == [HAPPY, SAD, FEAR, NEUTRAL]
        assert data.usage.tolist() == [0, 0, 1, 2]
        assert data.row.tolist() == [0, 1, 2, 3]  # csv order is the canonical row order (joins FERPlus)
        assert data.pixels[:, 0, 0].tolist() == [10, 20, 30, 40]
    assert check_source(fer_csv) == "csv" and check_source(fer_csv.parent) == "csv"
    test = load_fer(fer_csv, splits=["PublicTest", "PrivateTest"])
    assert test.labels.tolist() == [FEAR, NEUTRAL]
    assert len(load_fer(fer_csv).split("PublicTest")) == 1


def _write_image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), _face(value))


@pytest.fixture
def kaggle_folders(tmp_path: Path) -> Path:
    root = tmp_path / "kaggle"
    # Mixed spellings: folders are mapped by name, not by their alphabetical position.
    _write_image(root / "train" / "angry" / "Training_1.jpg", 10)
    _write_image(root / "train" / "Happy" / "Training_2.jpg", 100)
    _write_image(root / "train" / "sadness" / "Training_3.jpg", 200)
    _write_image(root / "test" / "Happy" / "PublicTest_4.jpg", 120)
    _write_image(root / "test" / "surprised" / "PrivateTest_5.jpg", 250)
    (root / "train" / "angry" / "notes.txt").write_text("not an image")  # ignored
    return root


def test_kaggle_folder_form_maps_class_names_not_alphabetical_order(kaggle_folders: Path) -> None:
    data = load_fer(kaggle_folders)
    by_value = {int(round(p.mean())): (int(label), int(usage)) for p, label, usage in zip(data.pixels, data.labels, data.usage)}
    assert by_value == {10: (ANGRY, 0), 100: (HAPPY, 0), 200: (SAD, 0), 120: (HAPPY, 1), 250: (SURPRISE, 2)}
    assert (data.row == -1).all()  # folders carry no csv row numbers
    assert check_source(kaggle_folders) == "folders"


def test_kaggle_folder_images_of_other_sizes_are_resized(tmp_path: Path) -> None:
    path = tmp_path / "k" / "train" / "neutral" / "Training_1.png"
    path.parent.mkdir(parents=True)
    cv2.imwrite(str(path), np.full((96, 96), 77, dtype=np.uint8))
    data = load_fer(tmp_path / "k")
    assert data.pixels.shape == (1, 48, 48) and data.pixels[0, 0, 0] == 77 and data.labels.tolist() == [NEUTRAL]


def _write_npz(path: Path, values: list[int], labels: list[int], usage: list[int], rows: list[int] | None) -> Path:
    arrays = {"pixels": np.stack([_face(v) for v in values]), "emotion": np.array(labels, dtype=np.uint8),
              "usage": np.array(usage, dtype=np.uint8)}
    if rows is not None:
        arrays["row"] = np.array(rows)
    np.savez_compressed(path, **arrays)
    return path


def test_npz_form_in_two_files_is_put_back_in_row_order(tmp_path: Path) -> None:
    _write_npz(tmp_path / "fer2013_train.npz", [10, 30], [HAPPY, SAD], [0, 0], rows=[0, 2])
    _write_npz(tmp_path / "fer2013_test.npz", [20, 40], [FEAR, DISGUST], [1, 2], rows=[1, 3])
    data = load_fer(tmp_path)
    assert data.row.tolist() == [0, 1, 2, 3]
    assert data.pixels[:, 0, 0].tolist() == [10, 20, 30, 40]
    assert data.labels.tolist() == [HAPPY, FEAR, SAD, DISGUST]
    assert data.usage.tolist() == [0, 1, 0, 2]
    assert check_source(tmp_path) == "npz"

    test = load_fer(tmp_path, splits=["PublicTest"])
    assert test.row.tolist() == [1] and test.labels.tolist() == [FEAR]
    single = load_fer(tmp_path / "fer2013_test.npz")
    assert single.row.tolist() == [1, 3]


def test_npz_without_rows_gets_unknown_rows(tmp_path: Path) -> None:
    data = load_fer(_write_npz(tmp_path / "mine.npz", [5], [ANGRY], [0], rows=None))
    assert data.row.tolist() == [-1]


def test_splits_that_no_npz_holds_raise(tmp_path: Path) -> None:
    _write_npz(tmp_path / "fer2013_test.npz", [20], [FEAR], [1], rows=[0])
    with pytest.raises(DataError, match="no rows of the splits Training"):
        load_fer(tmp_path, splits=["Training"])
    with pytest.raises(DataError, match="unknown splits"):
        load_fer(tmp_path, splits=["Validation"])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "not found at .*pass --data"),
        (lambda d: _write_csv(d / "fer2013.csv", [(0, _face(1), "Training")], ("label", "image", "split")),
         "expected emotion, pixels, Usage"),
        (lambda d: _write_csv(d / "fer2013.csv", [(0, np.zeros(10, np.uint8), "Training")]), "row 1: pixels has 10 values, expected 2304"),
        (lambda d: _write_csv(d / "fer2013.csv", [(0, _face(1), "Validation")]), "Usage 'Validation' is not one of"),
        (lambda d: _write_csv(d / "fer2013.csv", [(9, _face(1), "Training")]), "labels must lie in 0..6"),
        (lambda d: _write_csv(d / "fer2013.csv", []), "no data rows"),
        (lambda d: (_write_image(d / "train" / "bored" / "Training_1.jpg", 1), d)[1], "unknown class folder .*bored"),
        (lambda d: (d / "train").mkdir() or d, "no images under train/<class>/"),
        (lambda d: np.savez(d / "fer2013.npz", images=np.zeros((1, 48, 48), np.uint8)) or d / "fer2013.npz",
         r"lacks arrays \['emotion', 'pixels', 'usage'\]"),
        (lambda d: (d / "faces.txt").write_text("x") and d / "faces.txt", "expected a .npz, a fer2013.csv or a folder"),
        (lambda d: d, "holds no fer2013\\*.npz, no fer2013.csv and no train/ image folder"),
    ],
    ids=["missing", "csv-columns", "csv-pixels", "csv-usage", "csv-label", "csv-empty", "unknown-class", "no-images",
         "npz-arrays", "wrong-file", "empty-folder"],
)
def test_bad_data_raises_data_error_with_the_fix(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_fer(path)


def test_check_source_does_not_read_pixels_but_reports_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        check_source(tmp_path / "nope")
    with pytest.raises(DataError, match="holds no"):
        check_source(tmp_path)


# ------------------------------------------------------------------------------------------------ FERPlus

_FERPLUS_HEADER = ("Usage", "Image name", *FERPLUS_COLUMNS)


def _votes(**counts: int) -> list[int]:
    return [counts.get(c, 0) for c in FERPLUS_COLUMNS]


@pytest.fixture
def ferplus_csv(tmp_path: Path) -> Path:
    rows = [
        _votes(happiness=8, neutral=2),  # 0: happy
        _votes(contempt=6, anger=4),  # 1: contempt majority -> left out
        _votes(NF=10),  # 2: not a face -> left out
        _votes(sadness=4, neutral=4, fear=2),  # 3: tie -> no majority, left out
        _votes(anger=5, disgust=3, unknown=2),  # 4: angry
        _votes(neutral=6, surprise=4),  # 5: neutral
    ]
    path = tmp_path / "fer2013new.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(_FERPLUS_HEADER)
        for i, votes in enumerate(rows):
            name = "" if votes[-1] == 10 else f"fer{i:07d}.png"
            writer.writerow(["Training", name, *votes])
    return path


def test_ferplus_votes_join_by_row_and_majority(ferplus_csv: Path) -> None:
    votes = load_ferplus_votes(ferplus_csv, np.array([5, 0, 1, 2, 3, 4]))
    assert votes.shape == (6, 10)
    assert votes[0, FERPLUS_COLUMNS.index("neutral")] == 6  # row 5 first: joined by row number, not position
    assert ferplus_majority(votes).tolist() == [NEUTRAL, HAPPY, -1, -1, -1, ANGRY]


def test_ferplus_soft_targets_are_shares_over_our_classes(ferplus_csv: Path) -> None:
    soft = ferplus_soft_targets(load_ferplus_votes(ferplus_csv, np.arange(6)))
    assert soft.shape == (6, len(EMOTIONS))
    np.testing.assert_allclose(soft[0, [HAPPY, NEUTRAL]], [0.8, 0.2])
    np.testing.assert_allclose(soft[1, ANGRY], 1.0)  # contempt votes have no class of ours: dropped
    np.testing.assert_array_equal(soft[2], 0.0)  # only not-a-face votes: all zeros
    np.testing.assert_allclose(soft[[0, 1, 3, 4, 5]].sum(1), 1.0, rtol=1e-6)


def test_ferplus_errors(ferplus_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no row numbers"):
        load_ferplus_votes(ferplus_csv, np.array([0, -1]))
    with pytest.raises(DataError, match="has 6 rows but the data refers to row 9"):
        load_ferplus_votes(ferplus_csv, np.array([9]))
    with pytest.raises(DataError, match="not found .*--ferplus"):
        load_ferplus_votes(tmp_path / "missing.csv", np.array([0]))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("Usage,happy,sad\nTraining,1,2\n")
    with pytest.raises(DataError, match="expected FERPlus's fer2013new.csv"):
        load_ferplus_votes(wrong, np.array([0]))
    with pytest.raises(DataError, match=r"\(N, 10\)"):
        ferplus_majority(np.zeros((2, 7)))
    assert ferplus_majority(np.zeros((1, 10))).tolist() == [-1]  # no votes at all


def test_bucket_uri_is_fetched_once_into_the_cache(tmp_path, monkeypatch):
    """A file:// URI goes through the same pyarrow filesystem path as s3:// and gs://."""
    import training.data as data_mod

    src = tmp_path / "bucket" / "fer"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(src / "fer2013_test.npz", pixels=rng.integers(0, 255, (6, 48, 48), dtype=np.uint8),
             emotion=np.arange(6, dtype=np.uint8) % 7, usage=np.array([1, 1, 1, 2, 2, 2], np.uint8),
             row=np.arange(6, dtype=np.int32))
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(data_mod.storage, "is_remote", lambda p: str(p).startswith("file://"))
    uri = f"file://{src}"
    assert data_mod.check_source(uri) == "npz"
    loaded = data_mod.load_fer(uri)
    assert len(loaded) == 6 and list(loaded.split("PrivateTest").labels) == [3, 4, 5]
    assert list((tmp_path / "cache" / "data").rglob("fer2013_test.npz"))
    with pytest.raises(data_mod.DataError, match="not found"):
        data_mod.load_fer(f"file://{tmp_path}/nowhere")
