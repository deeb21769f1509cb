"""Evaluate a checkpoint on FER-2013 (and FERPlus): accuracy, per-class scores, confusion matrix, calibration,
test-time augmentation, training curves and CPU throughput, written as one metrics.json plus figures.

    fer-video evaluate runs/cpu_small/model --data ../shared/data/fer2013 \\
        --ferplus ../shared/data/fer2013/fer2013new.csv --out runs/cpu_small/eval

Predictions go through :meth:`fer_core.Classifier.predict_proba`, i.e. fer_core's eval preset, so the numbers
are those of the annotation job. The default ``--tta checkpoint`` uses the TTA recorded in the checkpoint.
Protocol (docs/EVALUATION.md): choose everything on PublicTest; report PrivateTest once, for the final model.
The same command runs as ``python training/evaluate.py`` from a checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    model_dir: Path = typer.Argument(..., help="Checkpoint folder (e.g. runs/cpu_small/model)."),
    data: str = typer.Option(..., "--data", help="FER-2013: npz folder, fer2013.csv or Kaggle image folder."),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json and the figures."),
    ferplus: Optional[str] = typer.Option(None, "--ferplus", help="FERPlus fer2013new.csv (adds majority-vote accuracy)."),
    tta: str = typer.Option("checkpoint", "--tta", help="checkpoint | none | flip | tencrop."),
    splits: str = typer.Option("PublicTest,PrivateTest", "--splits", help="Comma-separated FER-2013 splits."),
    metrics_file: Optional[Path] = typer.Option(
        None, "--metrics-file", help="metrics.jsonl of the training run (default: next to MODEL_DIR)."
    ),
    limit: int = typer.Option(0, "--limit", help="At most this many faces per split (0 = all); for smoke runs."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda for the accuracy pass."),
    precision: str = typer.Option("auto", "--precision", help="auto (as the annotation job) | fp32 | bf16."),
    throughput_seconds: float = typer.Option(2.0, "--throughput-seconds", help="CPU throughput measurement time (0 = skip)."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw the PNG figures."),
) -> None:
    """Evaluate a checkpoint and write OUT/metrics.json plus PNG figures."""
    from fer_core.checkpoint import CheckpointError
    from training.data import DataError
    from training.evaluate import METRICS_JSON, EvaluationError, evaluate, summary_lines

    try:
        result = evaluate(
            model_dir, data, out, ferplus=ferplus, tta=tta, splits=[s.strip() for s in splits.split(",") if s.strip()],
            metrics_file=metrics_file, limit=limit, device=device, precision=precision,
            throughput_seconds=throughput_seconds,
            figures=figures,
        )
    except (EvaluationError, DataError, CheckpointError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    for line in summary_lines(result):
        typer.echo(line)
    typer.echo(f"wrote {out / METRICS_JSON}")
