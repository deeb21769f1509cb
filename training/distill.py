"""Knowledge distillation: teachers' soft predictions, scored as an ensemble and saved, and the loss that teaches
them to a student.

    python training/distill.py --teacher runs/t1/model --teacher runs/t2/model \\
        --data ../shared/data/fer2013 --out teachers/ensemble_t1_t2.npz
    python training/distill.py --teacher runs/t3/model --teacher teachers/t1.npz ...   # with committed teachers
    python training/distill.py --teacher runs/t4/model ... --save-members teachers/   # also t4's own, teachers/t4.npz
    python training/distill.py --teacher teachers/t1.npz --teacher teachers/t2.npz ... --subsets  # every combination

The file holds the ensemble's probabilities (the mean of the teachers', each with flip averaging) on every face
of every split, keyed by the face's fer2013.csv row, and its record (each teacher's and the ensemble's PublicTest
accuracy). It is small (about 0.5 MB), so a teacher trained on one machine, or on a GPU, is committed as its
predictions and distilled elsewhere. PrivateTest predictions are written but never scored here.

A training config distils with ``distill_targets: teachers/....npz`` (its Training rows), ``distill_weight``
(the share of the loss that is distillation) and ``distill_temperature``. The teacher's predictions are those on
the clean face, while the student sees the augmented and corrupted one: the student learns to answer on a
blurred, small or dark face what the teacher answers on the clean face.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data import SPLITS, DataError, FerData  # noqa: E402

FORMAT = "fer-teacher-predictions/1"
LOG_FLOOR = -30.0
"""Smallest stored log-probability (a probability of about 1e-13)."""


def distill_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: T^2 * KL(teacher || student), both softened by ``temperature``.

    Args:
        logits: the student's (N, C) logits.
        teacher_probs: (N, C) teacher probabilities already softened by the same temperature
            (:func:`soften`), possibly mixed by mixup like the images.
        temperature: T; the T^2 factor keeps the gradient's scale independent of T.
    """
    log_student = F.log_softmax(logits.float() / temperature, dim=-1)
    t = teacher_probs.float()
    kl = (t * (torch.log(t.clamp(min=1e-12)) - log_student)).sum(-1)
    return kl.mean() * temperature**2


def soften(log_probs: np.ndarray | torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher probabilities at a temperature: softmax(log p / T)."""
    lp = torch.as_tensor(np.asarray(log_probs), dtype=torch.float32)
    return torch.softmax(lp / temperature, dim=-1)


def save_predictions(path: str | Path, rows: np.ndarray, usage: np.ndarray, probs: np.ndarray, record: dict[str, Any]) -> Path:
    """Write an ensemble's probabilities (N, C) for the faces of fer2013.csv ``rows``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log_probs = np.maximum(np.log(np.clip(probs, 1e-30, 1.0)), LOG_FLOOR).astype(np.float16)
    tmp = path.with_name(f".{path.name}.part.npz")
    np.savez_compressed(tmp, row=rows.astype(np.int64), usage=usage.astype(np.uint8), log_probs=log_probs,
                        record=np.array(json.dumps({"format": FORMAT, **record})))
    tmp.replace(path)
    return path


def load_predictions(path: str | Path, rows: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Log-probabilities (N, C) of a teacher file for the given fer2013.csv rows, and its record.

    Raises:
        DataError: if the file is missing or not a teacher file, or lacks some of the rows.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"teacher predictions not found at {str(p)!r}; write them with training/distill.py or fix distill_targets")
    with np.load(p, allow_pickle=False) as d:
        if "log_probs" not in d.files or "row" not in d.files or "record" not in d.files:
            raise DataError(f"{p.name} is not a teacher-predictions file (expected row, log_probs, record); write it with training/distill.py")
        record = json.loads(str(d["record"]))
        stored_rows, log_probs = d["row"], d["log_probs"].astype(np.float32)
    if (rows < 0).any():
        raise DataError("distillation joins teacher predictions by fer2013.csv row; this data form has no row numbers (use the npz or csv form)")
    index = np.full(int(max(stored_rows.max(initial=0), rows.max(initial=0))) + 1, -1, dtype=np.int64)
    index[stored_rows] = np.arange(len(stored_rows))
    found = index[rows]
    if (found < 0).any():
        raise DataError(f"{p.name} has no predictions for {int((found < 0).sum())} of the {len(rows)} training faces; "
                        "write it on the same data set")
    return log_probs[found], record


def member_predictions(source: str, data: FerData, *, device: torch.device) -> tuple[np.ndarray, dict[str, Any]]:
    """One teacher's probabilities (N, C) on every face of ``data``, with flip averaging, and its record (its
    PublicTest accuracy). ``source`` is a checkpoint folder, or a predictions file this script wrote (``.npz``: a
    teacher committed as its predictions, trained in an earlier session or on another machine; a file that holds an
    ensemble counts as one member)."""
    from fer_core.checkpoint import load_checkpoint

    if str(source).endswith(".npz"):
        log_probs, stored = load_predictions(source, data.row)
        probs = np.exp(log_probs.astype(np.float64))
        probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)  # stored as float16 log-probabilities
        members = stored.get("teachers", [])
        name = members[0].get("name") if len(members) == 1 else f"{Path(source).stem} ({len(members)} teachers)"
        return probs, {"source": str(source), "name": name, "public_accuracy_flip": _public_accuracy(probs, data)}
    from training.align import as_served
    from training.loop import predict_logits

    model, meta, _ = load_checkpoint(source)
    model = model.to(device).float()
    probs = predict_logits(model, as_served(data.pixels, meta.preprocessing), meta.preprocessing,
                           device=device, tta="flip")
    return probs, {"source": str(source), "name": meta.name, "public_accuracy_flip": _public_accuracy(probs, data)}


def combine(probs: list[np.ndarray], members: list[dict[str, Any]], data: FerData) -> tuple[np.ndarray, dict[str, Any]]:
    """The ensemble of teachers' probabilities (their mean) and its record, for :func:`save_predictions`."""
    mean = sum(probs) / len(probs)
    return mean, {"teachers": members, "ensemble_public_accuracy": _public_accuracy(mean, data), "tta": "flip"}


def ensemble_predictions(teachers: list[str], data: FerData, *, device: torch.device) -> tuple[np.ndarray, dict[str, Any]]:
    """Mean probabilities of the teachers (each with flip averaging, in fp32) on every face of ``data``, and a
    record with each teacher's and the ensemble's PublicTest accuracy (PrivateTest is not scored)."""
    parts = [member_predictions(source, data, device=device) for source in teachers]
    return combine([p for p, _ in parts], [m for _, m in parts], data)


def subset_accuracies(probs: list[np.ndarray], data: FerData) -> list[tuple[tuple[int, ...], float]]:
    """PublicTest accuracy of the ensemble of every combination of two or more members (indices into ``probs``),
    best first (ties: fewer members first), from the same predictions: choosing an ensemble's members costs no model
    run. Empty where ``data`` holds no PublicTest faces."""
    from itertools import combinations

    public = data.usage == SPLITS.index("PublicTest")
    if not public.any():
        return []
    labels, views = data.labels[public], [p[public] for p in probs]  # only PublicTest is scored: slice it once
    scored = [(members, float(np.mean(sum(views[i] for i in members).argmax(1) == labels)))  # the sum ranks as the mean
              for k in range(2, len(probs) + 1) for members in combinations(range(len(probs)), k)]
    return sorted(scored, key=lambda s: (-s[1], len(s[0])))


def member_file(source: str, folder: str | Path) -> Path:
    """Where ``--save-members`` writes a checkpoint teacher's own predictions: ``folder/<run>.npz``, the run being
    the folder above an exported ``model/`` (``runs/teacher_x/model`` -> ``teacher_x.npz``), else the checkpoint
    folder's own name."""
    p = Path(source.rstrip("/"))
    return Path(folder) / f"{(p.parent if p.name == 'model' else p).name}.npz"


def _public_accuracy(probs: np.ndarray, data: FerData) -> float | None:
    public = data.usage == SPLITS.index("PublicTest")
    return float(np.mean(probs[public].argmax(1) == data.labels[public])) if public.any() else None


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    teacher: list[str] = typer.Option(..., "--teacher", help="A teacher checkpoint folder, or a predictions .npz "
                                      "this script wrote (repeat for an ensemble)."),
    data: str = typer.Option("../shared/data/fer2013", "--data", help="FER-2013 location."),
    out: str = typer.Option("teachers/ensemble.npz", "--out", help="Where to write the predictions."),
    save_members: Optional[Path] = typer.Option(None, "--save-members", help="Also write each checkpoint teacher's "
                                                "own predictions into this folder, as <run>.npz (see member_file)."),
    subsets: bool = typer.Option(False, "--subsets", help="Also print the PublicTest accuracy of every combination "
                                 "of two or more teachers, best first, to choose the ensemble's members."),
) -> None:
    """Score teachers and their ensemble on PublicTest and write their predictions on every face."""
    from fer_core.checkpoint import CheckpointError
    from training.data import load_fer

    try:
        fer = load_fer(data)
        parts = [member_predictions(source, fer, device=torch.device("cpu")) for source in teacher]
    except (DataError, CheckpointError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    probs, record = combine([p for p, _ in parts], [m for _, m in parts], fer)
    if save_members is not None:
        for source, (member_probs, member) in zip(teacher, parts):
            if not source.endswith(".npz"):
                own, own_record = combine([member_probs], [member], fer)  # an ensemble of one, as a file member reads it
                path = save_predictions(member_file(source, save_members), fer.row, fer.usage, own,
                                        {**own_record, "data": data})
                typer.echo(f"{member['name']}: its own predictions written to {path}")
    save_predictions(out, fer.row, fer.usage, probs, {**record, "data": data})
    for m in record["teachers"]:
        typer.echo(f"{m['name']}: PublicTest {m['public_accuracy_flip']:.4f} (flip)")
    typer.echo(f"ensemble of {len(teacher)}: PublicTest {record['ensemble_public_accuracy']:.4f}; written to {out}")
    if subsets:
        for members, accuracy in subset_accuracies([p for p, _ in parts], fer):
            typer.echo(f"subset {' + '.join(record['teachers'][i]['name'] for i in members)}: PublicTest {accuracy:.4f}")


if __name__ == "__main__":
    app()
