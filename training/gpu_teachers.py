"""Train the distillation teachers on one GPU and write what a commit needs: each teacher's exported model and
records, and the ensemble's predictions on every face.

    python training/gpu_teachers.py DATA_DIR --out OUT                   # the three teacher configs, 120 epochs
    python training/gpu_teachers.py DATA_DIR --out OUT --epochs 60 --teacher teacher_vgg_large_s1

DATA_DIR holds fer2013_train.npz and fer2013_test.npz. Each teacher is ``configs/train/<teacher>.yaml`` run with
Ray Train as ``training/train.py`` runs it (one worker with the GPU, bf16 autocast, the training set and its
augmentation on the GPU, a checkpoint every epoch; running the same command again resumes). Then:

- ``OUT/<teacher>/model/`` (the best PublicTest epoch, self-describing) and ``OUT/<teacher>/metrics.jsonl``;
- ``OUT/teachers.npz``: the ensemble's predictions (training/distill.py's format), for ``distill_targets``;
- ``OUT/summary.json``: each teacher's PublicTest accuracy, epochs and minutes, and the ensemble's PublicTest
  accuracy (PrivateTest is not scored).

The issue's budget is about 10 minutes on an H200-class GPU for all teachers; ``--epochs`` trades accuracy for
time. Without a GPU the script runs on the CPU (``--cpu``), which is how its test runs it, at toy size.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
TEACHERS = ("teacher_vgg_large_s1", "teacher_vgg_large_s2", "teacher_resnet18_s3")

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    data: Path = typer.Argument(..., help="Folder with fer2013_train.npz and fer2013_test.npz."),
    out: Path = typer.Option(Path("runs/gpu_teachers"), "--out", help="Where the teachers and their predictions go."),
    teacher: Optional[list[str]] = typer.Option(None, "--teacher", help=f"A config in configs/train/ (repeatable; default: {', '.join(TEACHERS)})."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per teacher (default: each config's)."),
    cpu: bool = typer.Option(False, "--cpu", help="Train on the CPU (for a smoke run without a GPU)."),
    set_: list[str] = typer.Option([], "--set", help="Any config key for every teacher: --set limit_train=512 (repeatable)."),
) -> None:
    """Train each teacher, export it, and write the ensemble's predictions."""
    import dataclasses

    import torch

    from training.config import ConfigError, load_config, parse_set
    from training.data import DataError, check_source, load_fer
    from training.distill import ensemble_predictions, save_predictions
    from training.train import run

    names = list(teacher) if teacher else list(TEACHERS)
    if not cpu and not torch.cuda.is_available():
        typer.echo("error: no CUDA GPU is visible; run on a GPU machine, or pass --cpu for a smoke run", err=True)
        raise typer.Exit(1)
    try:
        check_source(str(data))
        overrides = parse_set(set_)
        overrides.update({"data": str(data.resolve()), "use_gpu": not cpu, "num_workers": 1})
        if cpu:
            overrides.update({"cpus_per_worker": 1, "threads_per_worker": max(1, len(os.sched_getaffinity(0)))})
        if epochs is not None:
            overrides["epochs"] = epochs
        configs = []
        for name in names:
            path = REPO / "configs" / "train" / f"{name}.yaml"
            configs.append(load_config(path, overrides))
    except (ConfigError, DataError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)

    summary: dict = {"data": str(data), "device": torch.cuda.get_device_name(0) if not cpu else "cpu", "teachers": []}
    model_dirs = []
    for cfg in configs:
        start = time.perf_counter()
        as_given = dataclasses.replace(cfg, data="../shared/data/fer2013")
        model_dir = run(cfg, str(out), as_given)
        history = [json.loads(line) for line in (out / cfg.name / "metrics.jsonl").read_text().splitlines() if line]
        best = max(history, key=lambda h: h["best_public_accuracy"])
        record = {"name": cfg.name, "model": cfg.model, "epochs": len(history), "minutes": (time.perf_counter() - start) / 60,
                  "best_public_accuracy": best["best_public_accuracy"], "best_epoch": best["best_epoch"] + 1}
        summary["teachers"].append(record)
        model_dirs.append(model_dir)
        typer.echo(f"{cfg.name}: PublicTest {record['best_public_accuracy']:.4f} at epoch {record['best_epoch']} "
                   f"of {record['epochs']}, {record['minutes']:.1f} min")
    fer = load_fer(str(data))
    device = torch.device("cpu" if cpu else "cuda")
    probs, record = ensemble_predictions(model_dirs, fer, device=device)
    save_predictions(out / "teachers.npz", fer.row, fer.usage, probs, {**record, "data": "../shared/data/fer2013"})
    summary["ensemble_public_accuracy"] = record["ensemble_public_accuracy"]
    summary["members"] = record["teachers"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(f"ensemble of {len(model_dirs)}: PublicTest {record['ensemble_public_accuracy']:.4f}; "
               f"predictions in {out / 'teachers.npz'}")


if __name__ == "__main__":
    app()
