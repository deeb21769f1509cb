"""FER-2013 in the three forms users have: the npz of this project's data folder, Kaggle's ``fer2013.csv`` and
Kaggle's image folders, plus FERPlus votes as optional soft targets.

Every loader returns a :class:`FerData`: 48x48 uint8 faces, class indices in :data:`fer_core.labels.EMOTIONS`
order and the official split of each row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fer_core import storage
from fer_core.labels import EMOTIONS, class_index

SPLITS = ("Training", "PublicTest", "PrivateTest")
# FERPlus vote columns in the order of fer2013new.csv, mapped onto our classes (contempt, unknown, NF have none).
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
_FERPLUS_TO_OURS = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad", "anger": "angry", "disgust": "disgust", "fear": "fear"}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


class DataError(ValueError):
    """The data set is missing, malformed or unlike any supported form."""


@dataclass
class FerData:
    """Faces with labels and split."""

    pixels: np.ndarray
    """uint8 (N, 48, 48) grayscale faces."""
    labels: np.ndarray
    """int64 (N,) class indices in EMOTIONS order."""
    usage: np.ndarray
    """uint8 (N,) 0 = Training, 1 = PublicTest, 2 = PrivateTest."""
    row: np.ndarray
    """int64 (N,) row in the canonical fer2013.csv order (joins FERPlus), or -1 where unknown."""

    def __post_init__(self) -> None:
        n = len(self.pixels)
        if self.pixels.ndim != 3 or self.pixels.dtype != np.uint8:
            raise DataError(f"pixels must be uint8 (N, H, W), got {self.pixels.dtype} {self.pixels.shape}")
        for name in ("labels", "usage", "row"):
            if len(getattr(self, name)) != n:
                raise DataError(f"{name} has {len(getattr(self, name))} rows, pixels {n}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(EMOTIONS)):
            raise DataError(f"labels must lie in 0..{len(EMOTIONS) - 1}")

    def split(self, name: str) -> "FerData":
        """Rows of one split ('Training', 'PublicTest' or 'PrivateTest')."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        m = self.usage == SPLITS.index(name)
        return FerData(self.pixels[m], self.labels[m], self.usage[m], self.row[m])

    def subset(self, n: int, seed: int = 0) -> "FerData":
        """A stratified-enough random subset of at most n rows (for smoke runs)."""
        if n >= len(self.pixels):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self.pixels), n, replace=False))
        return FerData(self.pixels[idx], self.labels[idx], self.usage[idx], self.row[idx])

    def __len__(self) -> int:
        return len(self.pixels)


def load_fer(path: str | Path, splits: Sequence[str] | None = None) -> FerData:
    """Load FER-2013 from a path in any supported form.

    Args:
        path: a folder holding ``fer2013_train.npz`` / ``fer2013_test.npz`` (or ``fer2013.npz``), one such npz,
            a ``fer2013.csv``, a folder holding ``fer2013.csv``, or a Kaggle image folder with ``train/`` and ``test/``.
        splits: keep only these splits (None = all). With the npz form, files holding none of them are not
            decompressed, so evaluating on the test splits skips the large training file.

    Raises:
        DataError: naming what was expected and how to fix it.
    """
    if splits is not None:
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise DataError(f"unknown splits {unknown}; expected some of {', '.join(SPLITS)}")
        if not splits:
            raise DataError(f"no splits asked for; expected some of {', '.join(SPLITS)}")
    data = _load_any(local_copy(path), splits)
    if splits is None:
        return data
    keep = np.isin(data.usage, [SPLITS.index(s) for s in splits])
    return data if keep.all() else FerData(data.pixels[keep], data.labels[keep], data.usage[keep], data.row[keep])


def local_copy(path: str | Path) -> Path:
    """A local path for ``path``: itself, or for a bucket URI (s3://, gs://) a copy in the user cache, fetched
    once (a file, or every file under a folder) so each Ray Train worker reads the data set from its own disk."""
    if not storage.is_remote(str(path)):
        return Path(path)
    import hashlib

    import pyarrow.fs as pafs

    from fer_core.detect import cache_dir

    uri = str(path).rstrip("/")
    target = cache_dir() / "data" / hashlib.sha1(uri.encode()).hexdigest()[:16]
    fs, root = storage.resolve(uri)
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"FER-2013 data not found at {uri!r}; pass --data pointing at the npz folder, fer2013.csv or the Kaggle image folder")
        entries = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(root, recursive=True))
        for e in entries:
            if e.type != pafs.FileType.File:
                continue
            rel = Path(e.path).name if info.type == pafs.FileType.File else e.path[len(root.rstrip("/")) + 1 :]
            local = target / rel
            if local.is_file() and local.stat().st_size == e.size:
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.part")
            with fs.open_input_stream(e.path) as src, open(tmp, "wb") as dst:
                while chunk := src.read(8 << 20):
                    dst.write(chunk)
            tmp.replace(local)
    except OSError as e:
        raise DataError(f"cannot read {uri!r} ({' '.join(str(e).split())}); check the bucket URI and credentials") from e
    return target / Path(root).name if info.type == pafs.FileType.File else target


def _form(p: Path) -> str:
    """Which supported form ``p`` holds: 'npz', 'csv' (a file or a folder with one) or 'folders'."""
    if not p.exists():
        raise DataError(f"FER-2013 data not found at {str(p)!r}; pass --data pointing at the npz folder, fer2013.csv or the Kaggle image folder")
    if p.is_file():
        if p.suffix in (".npz", ".csv"):
            return p.suffix[1:]
        raise DataError(f"expected a .npz, a fer2013.csv or a folder, got {p.name!r}")
    if any(p.glob("fer2013*.npz")):
        return "npz"
    if (p / "fer2013.csv").is_file():
        return "csv"
    if (p / "train").is_dir():
        return "folders"
    raise DataError(
        f"{str(p)!r} holds no fer2013*.npz, no fer2013.csv and no train/ image folder; "
        "pass the folder of one of those forms with --data"
    )


def _load_any(p: Path, splits: Sequence[str] | None) -> FerData:
    form = _form(p)
    if form == "npz":
        if p.is_file():
            return _load_npz([p], splits)
        npz = sorted(p.glob("fer2013*.npz"))
        return _load_npz([f for f in npz if f.name != "fer2013.npz"] or npz, splits)
    if form == "csv":
        return _load_csv(p if p.is_file() else p / "fer2013.csv")
    return _load_folders(p)


def _load_npz(files: list[Path], splits: Sequence[str] | None = None) -> FerData:
    wanted = None if splits is None else [SPLITS.index(s) for s in splits]
    parts = []
    for f in files:
        with np.load(f) as d:
            missing = {"pixels", "emotion", "usage"} - set(d.files)
            if missing:
                raise DataError(f"{f.name} lacks arrays {sorted(missing)}; expected pixels, emotion, usage (see the data README)")
            # npz members decompress one by one: reading `usage` alone is cheap, `pixels` is not.
            if wanted is not None and not np.isin(d["usage"], wanted).any():
                continue
            row = d["row"].astype(np.int64) if "row" in d.files else np.full(len(d["emotion"]), -1)
            parts.append((d["pixels"], d["emotion"].astype(np.int64), d["usage"].astype(np.uint8), row))
    if not parts:
        raise DataError(f"{', '.join(f.name for f in files)} hold no rows of the splits {', '.join(splits or [])}")
    pixels, labels, usage, row = (np.concatenate(a) for a in zip(*parts))
    if (row >= 0).all():
        order = np.argsort(row, kind="stable")
        pixels, labels, usage, row = pixels[order], labels[order], usage[order], row[order]
    return FerData(np.ascontiguousarray(pixels), labels, usage, row)


def _load_csv(path: Path) -> FerData:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"emotion", "pixels", "Usage"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DataError(
                f"{path.name} has columns {reader.fieldnames}; expected emotion, pixels, Usage (Kaggle's fer2013.csv)"
            )
        pixels, labels, usage = [], [], []
        for i, rec in enumerate(reader):
            values = np.array(rec["pixels"].split(), dtype=np.uint8)
            if values.size != 48 * 48:
                raise DataError(f"{path.name} row {i + 1}: pixels has {values.size} values, expected 2304 (48x48)")
            if rec["Usage"] not in SPLITS:
                raise DataError(f"{path.name} row {i + 1}: Usage {rec['Usage']!r} is not one of {', '.join(SPLITS)}")
            pixels.append(values.reshape(48, 48))
            labels.append(int(rec["emotion"]))
            usage.append(SPLITS.index(rec["Usage"]))
    if not pixels:
        raise DataError(f"{path.name} has no data rows")
    n = len(pixels)
    return FerData(np.stack(pixels), np.array(labels, dtype=np.int64), np.array(usage, dtype=np.uint8), np.arange(n))


def _load_folders(root: Path) -> FerData:
    import cv2

    pixels, labels, usage = [], [], []
    for sub in ("train", "test"):
        folder = root / sub
        if not folder.is_dir():
            continue
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            try:
                label = class_index(class_dir.name)
            except ValueError as e:
                raise DataError(f"unknown class folder {str(class_dir)!r}: {e}") from None
            for f in sorted(class_dir.iterdir()):
                if f.suffix.lower() not in _IMAGE_SUFFIXES:
                    continue
                img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
                if img is None:
                    raise DataError(f"cannot read image {str(f)!r}; remove it or replace it with a valid image")
                if img.shape != (48, 48):
                    img = cv2.resize(img, (48, 48), interpolation=cv2.INTER_AREA)
                pixels.append(img)
                labels.append(label)
                # Kaggle's test/ mixes PublicTest_* and PrivateTest_* files; their names keep the split.
                if sub == "train":
                    usage.append(0)
                else:
                    usage.append(2 if f.name.startswith("PrivateTest") else 1)
    if not pixels:
        raise DataError(f"{str(root)!r} has no images under train/<class>/ or test/<class>/")
    return FerData(np.stack(pixels), np.array(labels, dtype=np.int64), np.array(usage, dtype=np.uint8), np.full(len(pixels), -1))


def load_ferplus_votes(path: str | Path, rows: np.ndarray) -> np.ndarray:
    """FERPlus votes for the given canonical fer2013.csv rows, as (N, 10) counts in FERPLUS_COLUMNS order.

    Raises:
        DataError: if the file is missing, has other columns, or the rows are unknown (-1).
    """
    p = local_copy(path)
    if not p.is_file():
        raise DataError(f"FERPlus votes not found at {str(p)!r}; pass --ferplus pointing at fer2013new.csv or leave it out")
    if len(rows) and (rows < 0).any():
        raise DataError("FERPlus votes join by fer2013.csv row; this data form has no row numbers (use the npz or csv form)")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not set(FERPLUS_COLUMNS) <= set(reader.fieldnames):
            raise DataError(f"{p.name} has columns {reader.fieldnames}; expected FERPlus's fer2013new.csv")
        table = np.array([[float(rec[c] or 0) for c in FERPLUS_COLUMNS] for rec in reader], dtype=np.float32)
    if len(rows) and rows.max() >= len(table):
        raise DataError(f"{p.name} has {len(table)} rows but the data refers to row {rows.max()}")
    return table[rows]


def ferplus_soft_targets(votes: np.ndarray) -> np.ndarray:
    """(N, 10) FERPlus votes -> (N, 7) vote shares over our classes; rows with no votes there get all zeros."""
    ours = np.zeros((len(votes), len(EMOTIONS)), dtype=np.float32)
    for j, col in enumerate(FERPLUS_COLUMNS):
        if col in _FERPLUS_TO_OURS:
            ours[:, EMOTIONS.index(_FERPLUS_TO_OURS[col])] = votes[:, j]
    total = ours.sum(1, keepdims=True)
    return np.divide(ours, total, out=np.zeros_like(ours), where=total > 0)


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """Majority class (our index) per row from (N, 10) FERPlus votes.

    -1 where the majority is contempt, unknown or not-a-face, where the top vote count is tied between columns
    (no majority; about 5% of rows) and where a row has no votes; those rows are left out of the FERPlus accuracy.
    """
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_COLUMNS):
        raise DataError(f"FERPlus votes must be (N, {len(FERPLUS_COLUMNS)}) in {FERPLUS_COLUMNS} order, got {votes.shape}")
    top = votes.argmax(1)
    best = votes.max(1, initial=0)
    decided = (best > 0) & ((votes == best[:, None]).sum(1) == 1)
    out = np.full(len(votes), -1, dtype=np.int64)
    for j, col in enumerate(FERPLUS_COLUMNS):
        if col in _FERPLUS_TO_OURS:
            out[(top == j) & decided] = EMOTIONS.index(_FERPLUS_TO_OURS[col])
    return out


def check_source(path: str | Path) -> str:
    """Check that ``path`` holds FER-2013 in a supported form without reading the pixels (a bucket URI is
    fetched into the cache first).

    Returns:
        'npz', 'csv' or 'folders'.

    Raises:
        DataError: naming the fix.
    """
    return _form(local_copy(path))
