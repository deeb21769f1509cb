"""Train the distillation teachers on one GPU, then (optionally) distil their ensemble into students, and write
what a commit needs: each run's records and exported model, and the ensemble's predictions on every face.

    python training/gpu_teachers.py DATA_DIR --out OUT                   # the three teacher configs, 120 epochs
    python training/gpu_teachers.py DATA_DIR --out OUT --minutes 4 --student student_kd_scratch --student-minutes 3
    python training/gpu_teachers.py DATA_DIR --out OUT --epochs 60 --teacher teacher_vgg_large_s1

DATA_DIR holds fer2013_train.npz and fer2013_test.npz (the test file may hold PublicTest alone: PrivateTest is
never scored here). Each teacher is ``configs/train/<teacher>.yaml``, run as ``training/train.py`` runs it, with
Ray Train where Ray is installed (``--backend ray``) and in one plain process where it is not (``--backend
local``, the same training code): one worker with the GPU, bf16 autocast, the training set and its augmentation on
the GPU, a checkpoint every epoch; running the same command again resumes. On a GPU the runs of a phase share it
in parallel processes (one small model leaves most of an H200 idle; the default with ``--backend local`` on a
GPU); ``--sequential``, the default otherwise, runs them one by one.

- ``OUT/<teacher>/model/`` (the best PublicTest epoch, self-describing), ``OUT/<teacher>/metrics.jsonl`` and
  ``OUT/<teacher>/predictions.npz`` (its own predictions, for choosing an ensemble elsewhere);
- ``OUT/teachers.npz``: the ensemble's predictions (training/distill.py's format), for ``distill_targets``;
- ``OUT/<student>/...``: each ``--student`` config trained with ``distill_targets`` set to that file;
- ``OUT/summary.json``: each run's PublicTest accuracy, epochs and minutes, and the ensemble's PublicTest
  accuracy (PrivateTest is not scored).

``--minutes`` / ``--student-minutes`` give each run a time budget (the ``time_budget_minutes`` config key): the
epochs that fit after the first one, the schedule spanning them. The issue's budget is about 10 minutes on an
H200-class GPU in all. Without a GPU the script runs on the CPU (``--cpu``), which is how its tests run it, at
toy size.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
TEACHERS = ("teacher_vgg_large_s1", "teacher_vgg_large_s2", "teacher_resnet18_s3")
RECORDED_DATA = "../shared/data/fer2013"
"""The data path the records name: where the data lives beside the project, not on the machine that trained."""

app = typer.Typer(add_completion=False, help=__doc__)


def _configs(names: list[str], overrides: dict) -> list:
    from training.config import load_config

    return [load_config(REPO / "configs" / "train" / f"{name}.yaml", overrides) for name in names]


def _train_one(cfg, out: Path, backend: str, device: str):
    """Train (or resume) one config; returns its exported model folder."""
    import dataclasses

    as_given = dataclasses.replace(cfg, data=RECORDED_DATA)
    if cfg.distill_targets:
        # The ensemble is committed as teachers/<OUT's name>.npz (README "Teachers on a GPU").
        as_given = dataclasses.replace(as_given, distill_targets=f"teachers/{Path(cfg.distill_targets).parent.name}.npz")
    if backend == "ray":
        from training.train import run

        return Path(run(cfg, str(out), as_given))
    from training.worker import train_local

    return train_local(cfg, out, as_given, device=device)


def _record(cfg, out: Path, minutes: float) -> dict:
    history = [json.loads(line) for line in (out / cfg.name / "metrics.jsonl").read_text().splitlines() if line]
    best = max(history, key=lambda h: h["best_public_accuracy"])
    return {"name": cfg.name, "model": cfg.model, "epochs": len(history), "minutes": round(minutes, 2),
            "seconds_per_epoch": round(sum(h["epoch_seconds"] + h["eval_seconds"] for h in history) / len(history), 2),
            "best_public_accuracy": best["best_public_accuracy"], "best_epoch": best["best_epoch"] + 1}


def _phase(names: list[str], args: list[str], out: Path, parallel: bool) -> list[dict]:
    """Train configs ``names`` in child processes of this script (all at once when ``parallel``), each logging to
    OUT/<name>.log; returns their records. A failed child ends the phase with its log's tail."""
    children = []
    for name in names:
        log = (out / f"{name}.log").open("w")
        cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--teacher", name, "--train-only"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        children.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        if not parallel:
            children[-1][1].wait()
    failed = []
    for name, proc, log in children:
        proc.wait()
        log.close()
        if proc.returncode != 0:
            failed.append(name)
    for name in failed:
        tail = (out / f"{name}.log").read_text().splitlines()[-15:]
        typer.echo(f"--- {name} failed; the end of {out / (name + '.log')}:\n" + "\n".join(tail), err=True)
    if failed:
        typer.echo(f"error: {', '.join(failed)} failed (logs above); the same command resumes from their checkpoints",
                   err=True)
        raise typer.Exit(1)
    return [json.loads((out / name / "record.json").read_text()) for name in names]


@app.command()
def main(
    data: Path = typer.Argument(..., help="Folder with fer2013_train.npz and fer2013_test.npz."),
    out: Path = typer.Option(Path("runs/gpu_teachers"), "--out", help="Where the runs and their predictions go."),
    teacher: Optional[list[str]] = typer.Option(None, "--teacher", help=f"A config in configs/train/ (repeatable; default: {', '.join(TEACHERS)})."),
    student: Optional[list[str]] = typer.Option(None, "--student", help="A config in configs/train/ to distil the ensemble into (repeatable)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per teacher (default: each config's)."),
    minutes: float = typer.Option(0.0, help="Time budget per teacher in minutes (0 = none): the epochs that fit."),
    student_minutes: float = typer.Option(0.0, help="Time budget per student in minutes (0 = none)."),
    cpu: bool = typer.Option(False, "--cpu", help="Train on the CPU (for a smoke run without a GPU)."),
    backend: str = typer.Option("auto", help="ray (Ray Train), local (one process, no Ray) or auto (ray where installed)."),
    parallel: Optional[bool] = typer.Option(None, "--parallel/--sequential", help="Run a phase's trainings at once (default on a GPU without Ray) or one after another."),
    set_: list[str] = typer.Option([], "--set", help="Any config key for every run: --set limit_train=512 (repeatable)."),
    train_only: bool = typer.Option(False, "--train-only", hidden=True, help="Child mode: train --teacher and stop."),
) -> None:
    """Train each teacher, export it, write the ensemble's predictions, and distil them into each student."""
    import torch

    from training.config import ConfigError, parse_set
    from training.data import DataError, check_source

    names = list(teacher) if teacher else list(TEACHERS)
    students = list(student or [])
    if backend == "auto":
        backend = "ray" if importlib.util.find_spec("ray") is not None else "local"
    if backend not in ("ray", "local"):
        typer.echo(f"error: --backend must be ray, local or auto, not {backend!r}", err=True)
        raise typer.Exit(1)
    if not cpu and not torch.cuda.is_available():
        typer.echo("error: no CUDA GPU is visible; run on a GPU machine, or pass --cpu for a smoke run", err=True)
        raise typer.Exit(1)
    try:
        check_source(str(data))
        overrides = parse_set(set_)
        overrides.update({"data": str(data.resolve()), "use_gpu": not cpu, "num_workers": 1})
        if cpu:
            overrides.update({"cpus_per_worker": 1, "threads_per_worker": max(1, len(os.sched_getaffinity(0)))})
        teacher_overrides = {**overrides, **({"epochs": epochs} if epochs is not None else {}),
                             **({"time_budget_minutes": minutes} if minutes else {})}
        configs = _configs(names, teacher_overrides)
        student_overrides = {**overrides, "distill_targets": str((out / "teachers.npz").resolve()),
                             **({"time_budget_minutes": student_minutes} if student_minutes else {})}
        student_configs = _configs(students, student_overrides)
    except (ConfigError, DataError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if cpu else "cuda"

    if train_only:  # a child of _phase: one config, given as --teacher (a student too, with its overrides)
        for cfg in configs:
            start = time.perf_counter()
            _train_one(cfg, out, backend, device)
            (out / cfg.name / "record.json").write_text(json.dumps(_record(cfg, out, (time.perf_counter() - start) / 60)))
        return

    from training.data import load_fer
    from training.distill import combine, member_predictions, save_predictions

    common = [str(data), "--out", str(out), "--backend", backend, *(["--cpu"] if cpu else [])]
    for s in set_:
        common += ["--set", s]
    # In parallel only by default where it was made for: one GPU, no Ray (each child would start a Ray of its own).
    parallel = (not cpu and backend == "local") if parallel is None else parallel
    summary: dict = {"data": RECORDED_DATA, "device": torch.cuda.get_device_name(0) if not cpu else "cpu",
                     "backend": backend, "parallel": parallel, "torch": torch.__version__}
    start = time.perf_counter()
    teacher_args = [*common, *(["--epochs", str(epochs)] if epochs is not None else []), "--minutes", str(minutes)]
    summary["teachers"] = _phase(names, teacher_args, out, parallel)
    for record in summary["teachers"]:
        typer.echo(f"{record['name']}: PublicTest {record['best_public_accuracy']:.4f} at epoch {record['best_epoch']} "
                   f"of {record['epochs']}, {record['minutes']:.1f} min")
    summary["teacher_minutes"] = round((time.perf_counter() - start) / 60, 2)

    fer = load_fer(str(data))
    dev = torch.device(device)
    parts = []
    for cfg in configs:  # each teacher's own predictions too, so that an ensemble can be chosen elsewhere
        probs, member = member_predictions(str(out / cfg.name / "model"), fer, device=dev)
        record = combine([probs], [member], fer)[1]
        save_predictions(out / cfg.name / "predictions.npz", fer.row, fer.usage, probs, {**record, "data": RECORDED_DATA})
        parts.append((probs, member))
    probs, record = combine([p for p, _ in parts], [m for _, m in parts], fer)
    save_predictions(out / "teachers.npz", fer.row, fer.usage, probs, {**record, "data": RECORDED_DATA})
    summary["ensemble_public_accuracy"] = record["ensemble_public_accuracy"]
    summary["members"] = record["teachers"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(f"ensemble of {len(configs)}: PublicTest {record['ensemble_public_accuracy']:.4f}; "
               f"predictions in {out / 'teachers.npz'}")

    if student_configs:
        start = time.perf_counter()
        summary["students"] = _phase(students, [*common, "--minutes", str(student_minutes),
                                                "--set", f"distill_targets={out.resolve() / 'teachers.npz'}"], out, parallel)
        summary["student_minutes"] = round((time.perf_counter() - start) / 60, 2)
        for record in summary["students"]:
            typer.echo(f"{record['name']} (student): PublicTest {record['best_public_accuracy']:.4f} at epoch "
                       f"{record['best_epoch']} of {record['epochs']}, {record['minutes']:.1f} min")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app()
