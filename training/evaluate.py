"""Evaluate a checkpoint on FER-2013 (and FERPlus): accuracy, per-class scores, confusion matrix, calibration,
test-time augmentation, training curves and CPU throughput, written as one metrics.json plus figures.

    python training/evaluate.py runs/cpu_small/model --data ../shared/data/fer2013 \\
        --ferplus ../shared/data/fer2013/fer2013new.csv --out runs/cpu_small/eval

Predictions go through :meth:`fer_core.Classifier.predict_proba`, i.e. fer_core's eval preset, so the numbers
are those of the annotation job. The default ``--tta checkpoint`` uses the TTA recorded in the checkpoint.
Protocol (docs/EVALUATION.md): choose everything on PublicTest; report PrivateTest once, for the final model.

The command (``fer-video evaluate``) lives in :mod:`fer_video.evaluate`; it calls :func:`evaluate` here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fer_core.checkpoint import CheckpointError, Classifier, load_checkpoint, load_classifier  # noqa: E402
from fer_core.config import PRECISIONS  # noqa: E402
from fer_video.evaluate import app, main  # noqa: E402, F401  (the command; this file runs it as a script)
from training.align import as_served  # noqa: E402
from training.data import SPLITS, DataError, FerData, ferplus_majority, load_fer, load_ferplus_votes  # noqa: E402
from training.metrics import classification_report  # noqa: E402

TTA_CHOICES = ("checkpoint", "none", "flip", "tencrop")
TENCROP_RATIO = 44 / 48
"""Side of the ten-crop windows relative to the face (44 px of a 48 px face, like the training random crop)."""
ECE_BINS = 15
METRICS_JSON = "metrics.json"


class EvaluationError(ValueError):
    """An evaluation option or input file is invalid."""


# ----------------------------------------------------------------------------------------------- predictions


def tencrop_windows(height: int, width: int, ratio: float = TENCROP_RATIO) -> list[tuple[int, int, int, int]]:
    """The four corner windows and the centre window of a ``ratio``-sized crop, as (y0, x0, h, w)."""
    h, w = max(1, round(height * ratio)), max(1, round(width * ratio))
    cy, cx = (height - h) // 2, (width - w) // 2
    return [(0, 0, h, w), (0, width - w, h, w), (height - h, 0, h, w), (height - h, width - w, h, w), (cy, cx, h, w)]


def predict_proba_tta(classifier: Classifier, faces: np.ndarray, tta: str, batch_size: int = 256) -> np.ndarray:
    """Class probabilities for uint8 faces under a test-time augmentation.

    Args:
        classifier: a loaded classifier; its own ``meta.tta`` is replaced by ``tta``.
        faces: uint8 faces, N x H x W (grayscale) or N x H x W x 3 (RGB).
        tta: 'none', 'flip' (average with the mirror image) or 'tencrop' (corner and centre crops of
            :data:`TENCROP_RATIO` of the side, each resized back by the eval preset, each with its mirror).
        batch_size: faces per forward pass.

    Returns:
        float32 (N, len(classes)) probabilities.
    """
    if tta not in ("none", "flip", "tencrop"):
        raise EvaluationError(f"tta must be one of none, flip, tencrop; got {tta!r}")
    mode = "flip" if tta == "tencrop" else tta
    # The same loaded (fused or quantized) network, told to use another test-time augmentation.
    clf = copy.copy(classifier)
    clf.meta = dataclasses.replace(classifier.meta, tta=mode)
    if tta != "tencrop":
        return clf.predict_proba(faces, batch_size=batch_size)
    total = np.zeros((len(faces), len(clf.classes)), dtype=np.float64)
    windows = tencrop_windows(faces.shape[1], faces.shape[2])
    for y0, x0, h, w in windows:
        total += clf.predict_proba(np.ascontiguousarray(faces[:, y0 : y0 + h, x0 : x0 + w]), batch_size=batch_size)
    return (total / len(windows)).astype(np.float32)


def cpu_throughput(
    model_dir: str | Path, faces: np.ndarray, *, batch_size: int = 64, seconds: float = 2.0, precision: str = "auto"
) -> dict:
    """Faces per second through ``predict_proba`` on one CPU thread, with the checkpoint's own TTA.

    Args:
        model_dir: checkpoint folder.
        faces: uint8 faces to classify (tiled to one batch if fewer).
        batch_size: faces per call, as the annotation job's classifier batches.
        seconds: measure for at least this long (after one warm-up batch).
        precision: as :func:`fer_core.load_classifier` takes it (auto = what the annotation job uses on this CPU).
    """
    import torch

    if len(faces) == 0:
        raise EvaluationError("no faces to measure throughput on")
    batch = faces[np.arange(batch_size) % len(faces)]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clf = load_classifier(model_dir, device="cpu", precision=precision)
        clf.predict_proba(batch, batch_size=batch_size)
        done, start = 0, time.perf_counter()
        while True:
            clf.predict_proba(batch, batch_size=batch_size)
            done += batch_size
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and done >= 3 * batch_size:
                break
    finally:
        torch.set_num_threads(previous)
    return {
        "faces_per_s": done / elapsed,
        "batch_size": batch_size,
        "threads": 1,
        "device": "cpu",
        "tta": clf.meta.tta,
        "precision": clf.precision,
        "input": f"{faces.shape[1]}x{faces.shape[2]} uint8",
        "faces": done,
        "seconds": elapsed,
    }


# ----------------------------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Confusion matrix, coloured by row share (recall), annotated with counts and shares."""
    plt = _pyplot()
    cm = np.asarray(cm)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confidence(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Per predicted class, a histogram of the top-class confidence, correct and wrong predictions stacked."""
    plt = _pyplot()
    pred, conf = probs.argmax(1), probs.max(1)
    cols = 4
    rows = math.ceil(len(classes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for k, ax in enumerate(axes.flat):
        if k >= len(classes):
            ax.axis("off")
            continue
        m = pred == k
        ax.hist([conf[m & (labels == k)], conf[m & (labels != k)]], bins=bins, stacked=True,
                color=["tab:green", "tab:red"], label=["correct", "wrong"])
        ax.set_title(f"predicted {classes[k]} (n={int(m.sum())})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        if k == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.supxlabel("confidence (top-class probability)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(cal_dict: dict, path: Path, title: str) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with sample counts below."""
    plt = _pyplot()
    edges = np.asarray(cal_dict["bin_edges"])
    acc = np.array([np.nan if v is None else v for v in cal_dict["bin_accuracy"]])
    conf = np.array([np.nan if v is None else v for v in cal_dict["bin_confidence"]])
    count = np.asarray(cal_dict["bin_count"])
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centres, np.nan_to_num(acc), width=width, edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(centres, np.nan_to_num(conf - acc), bottom=np.nan_to_num(acc), width=width, color="tab:red", alpha=0.3,
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}  ECE {cal_dict['ece']:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(centres, count, width=width, color="gray")
    axc.set_ylabel("faces")
    axc.set_xlabel("confidence")
    axc.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Epoch records from a training run's metrics.jsonl (one JSON object per line).

    Raises:
        EvaluationError: for a missing file or a line that is not a JSON object.
    """
    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"metrics file {str(p)!r} not found; pass the metrics.jsonl of a training run")
    history = []
    for i, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvaluationError(f"{p.name} line {i} is not JSON ({e})") from None
        if not isinstance(record, dict):
            raise EvaluationError(f"{p.name} line {i}: expected a JSON object, got {type(record).__name__}")
        history.append(record)
    return history


def plot_training_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss, accuracy (train and PublicTest, with and without flip) and learning rate per epoch."""
    plt = _pyplot()
    epochs = [h.get("epoch", i) + 1 for i, h in enumerate(history)]

    def series(key: str) -> list[float] | None:
        values = [h.get(key) for h in history]
        return None if all(v is None for v in values) else [np.nan if v is None else v for v in values]

    panels = [
        ("loss", ["train_loss"]),
        ("accuracy", ["train_accuracy", "public_accuracy", "public_accuracy_flip"]),
        ("learning rate", ["lr"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, (ylabel, keys) in zip(axes, panels):
        for key in keys:
            values = series(key)
            if values is not None:
                ax.plot(epochs, values, marker="o" if len(epochs) < 40 else None, ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- evaluation


def ferplus_accuracy(probs: np.ndarray, votes: np.ndarray) -> dict[str, Any]:
    """Accuracy against the FERPlus majority vote over the 7 shared classes.

    Rows whose majority is contempt, unknown or not-a-face (or tied) are left out and counted.
    """
    majority = ferplus_majority(votes)
    keep = majority >= 0
    n = int(keep.sum())
    correct = int((probs.argmax(1)[keep] == majority[keep]).sum())
    return {"accuracy": correct / n if n else 0.0, "n": n, "left_out": int((~keep).sum())}


def evaluate_split(
    classifier: Classifier,
    data: FerData,
    *,
    tta: str,
    out: Path,
    split: str,
    ferplus: str | Path | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """Every figure of one split; its confusion, confidence and reliability PNGs go to ``out`` when ``figures``."""
    start = time.perf_counter()
    probs = predict_proba_tta(classifier, as_served(data.pixels, classifier.meta.preprocessing), tta)
    seconds = time.perf_counter() - start
    report = classification_report(probs, data.labels, classifier.classes, n_bins=ECE_BINS)
    if ferplus is not None:
        report["ferplus"] = ferplus_accuracy(probs, load_ferplus_votes(ferplus, data.row))
    report["predict_seconds"] = seconds
    if not figures:
        return report
    title = f"{split} ({classifier.model_id}, tta={tta})"
    names = {
        "confusion_matrix": f"{split}_confusion.png",
        "confidence_histograms": f"{split}_confidence.png",
        "reliability_diagram": f"{split}_reliability.png",
    }
    plot_confusion(np.asarray(report["confusion_matrix"]), classifier.classes, out / names["confusion_matrix"], title)
    plot_confidence(probs, data.labels, classifier.classes, out / names["confidence_histograms"], title)
    plot_reliability(report["calibration"], out / names["reliability_diagram"], title)
    report["figures"] = names
    return report


def evaluate(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    ferplus: str | Path | None = None,
    tta: str = "checkpoint",
    splits: Sequence[str] = ("PublicTest", "PrivateTest"),
    metrics_file: str | Path | None = None,
    limit: int = 0,
    device: str = "auto",
    precision: str = "auto",
    throughput_seconds: float = 2.0,
    figures: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint and write ``metrics.json`` and the figures into ``out``.

    Args:
        model_dir: checkpoint folder (``fer_checkpoint.json`` + ``model.safetensors``).
        data: FER-2013 in any form :func:`training.data.load_fer` reads.
        out: folder for metrics.json and the PNGs (created).
        ferplus: FERPlus ``fer2013new.csv``; adds accuracy against the majority vote.
        tta: 'checkpoint' (the TTA the checkpoint records, as the annotation job runs), 'none', 'flip' or 'tencrop'.
        splits: FER-2013 splits to evaluate.
        metrics_file: a training run's metrics.jsonl for the training curves; None looks for one next to
            ``model_dir`` (``train.py`` writes ``OUT/<name>/metrics.jsonl`` beside ``OUT/<name>/model``).
        limit: evaluate at most this many faces per split (0 = all), for smoke runs.
        device: 'auto', 'cpu' or 'cuda' for the accuracy pass (throughput is always one CPU thread).
        precision: 'auto' (as the annotation job: bf16 on GPUs and CPUs with native bf16), 'fp32' or 'bf16'; used
            for the accuracy pass and the throughput alike.
        throughput_seconds: how long to measure CPU throughput (0 = skip).
        figures: draw the PNGs (off: numbers only, faster).

    Returns:
        The dictionary written to metrics.json.

    Raises:
        EvaluationError, DataError, CheckpointError: naming the fix.
    """
    if tta not in TTA_CHOICES:
        raise EvaluationError(f"--tta must be one of {', '.join(TTA_CHOICES)}; got {tta!r}")
    splits = list(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise EvaluationError(f"--splits takes a comma-separated subset of {', '.join(SPLITS)}; got {','.join(splits)!r}")
    if limit < 0:
        raise EvaluationError(f"--limit must be >= 0, got {limit}")
    if device not in ("auto", "cpu", "cuda"):
        raise EvaluationError(f"--device must be auto, cpu or cuda; got {device!r}")
    if precision not in PRECISIONS:
        raise EvaluationError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise EvaluationError("--device cuda, but torch sees no CUDA GPU; use --device cpu")
    if ferplus is not None and not Path(ferplus).is_file():
        raise DataError(f"FERPlus votes not found at {str(ferplus)!r}; pass --ferplus pointing at fer2013new.csv or leave it out")
    model, meta, model_id = load_checkpoint(model_dir)
    classifier = Classifier(model, meta, model_id, device=device, precision=precision)
    effective_tta = meta.tta if tta == "checkpoint" else tta
    if metrics_file is None:
        candidate = Path(model_dir).parent / "metrics.jsonl"
        metrics_file = candidate if candidate.is_file() else None
    history = read_history(metrics_file) if metrics_file is not None else None
    dataset = load_fer(data, splits=splits)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "model": {"dir": str(model_dir), "id": model_id, "name": meta.name, "arch": meta.arch,
                  "arch_kwargs": meta.arch_kwargs, "classes": meta.classes, "tta": meta.tta,
                  "preprocessing": meta.preprocessing.to_dict(), "checkpoint_metrics": meta.metrics},
        "data": str(data),
        "ferplus": str(ferplus) if ferplus is not None else None,
        "tta": effective_tta,
        "tta_option": tta,
        "precision": classifier.precision,
        "device": str(classifier.device),
        "ece_bins": ECE_BINS,
        "limit": limit,
        "splits": {},
    }
    for split in splits:
        part = dataset.split(split)
        if limit:
            part = part.subset(limit, seed=0)
        if len(part) == 0:
            raise DataError(f"{str(data)!r} has no {split} rows; pick other --splits")
        result["splits"][split] = evaluate_split(
            classifier, part, tta=effective_tta, out=out, split=split, ferplus=ferplus, figures=figures
        )
    if history is not None:
        result["training"] = {"metrics_file": str(metrics_file), "epochs": len(history),
                              "last": history[-1] if history else None}
        if figures:
            plot_training_curves(history, out / "training_curves.png")
            result["training"]["figure"] = "training_curves.png"
    if throughput_seconds > 0:
        faces = dataset.split(splits[0]).pixels[:256]
        result["throughput"] = cpu_throughput(model_dir, faces, seconds=throughput_seconds, precision=precision)
    (out / METRICS_JSON).write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One human-readable line per split, plus throughput."""
    lines = []
    for split, r in result["splits"].items():
        line = (f"{split}: accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  ECE {r['ece']:.4f}  "
                f"(n={r['n']}, tta={result['tta']}, {result.get('precision', 'fp32')})")
        if "ferplus" in r:
            line += f"  FERPlus-majority accuracy {r['ferplus']['accuracy']:.4f} (n={r['ferplus']['n']})"
        lines.append(line)
    if "throughput" in result:
        t = result["throughput"]
        lines.append(f"CPU throughput: {t['faces_per_s']:.0f} faces/s (1 thread, batch {t['batch_size']}, tta={t['tta']}, "
                     f"{t.get('precision', 'fp32')})")
    return lines


if __name__ == "__main__":
    app()
