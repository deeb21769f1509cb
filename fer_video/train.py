"""Train the emotion classifier with Ray Train (TorchTrainer, DDP over gloo on CPU, NCCL on GPUs).

    fer-video train --config configs/train/debug.yaml --out runs/debug

Running the same command again resumes from the latest checkpoint under OUT/<name>/. At the end the best
epoch on PublicTest is exported as a self-describing checkpoint to OUT/<name>/model/.
The same command runs as ``python training/train.py`` from a checkout.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    config: Path = typer.Option(..., "--config", help="YAML file in configs/train/."),
    out: str = typer.Option(..., "--out", help="Run folder: a local path or a bucket URI (s3://, gs://)."),
    num_workers: Optional[int] = typer.Option(None, help="Ray Train workers (overrides the config)."),
    use_gpu: Optional[bool] = typer.Option(None, "--use-gpu/--no-gpu", help="Train on GPUs (overrides the config)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (overrides the config)."),
    data: Optional[str] = typer.Option(None, help="FER-2013 location (overrides the config)."),
    set_: list[str] = typer.Option([], "--set", help="Any config key: --set lr=0.05 (repeatable)."),
) -> None:
    """Train, checkpoint every epoch, resume on re-run, export the best PublicTest epoch."""
    from fer_core import storage
    from fer_core.checkpoint import CheckpointError
    from training.config import ConfigError, load_config, parse_set
    from training.data import DataError, check_source
    from training.train import run
    from training.warmstart import check_init_from

    overrides = parse_set(set_)
    for key, value in (("num_workers", num_workers), ("use_gpu", use_gpu), ("epochs", epochs), ("data", data)):
        if value is not None:
            overrides[key] = value
    try:
        cfg = load_config(config, overrides)
        check_source(cfg.data)
        if cfg.ferplus and not storage.is_remote(cfg.ferplus) and not Path(cfg.ferplus).is_file():
            raise DataError(f"FERPlus votes not found at {cfg.ferplus!r}; fix ferplus in the config or drop it")
        if cfg.init_from:
            check_init_from(cfg)
        if cfg.distill_targets and not Path(cfg.distill_targets).is_file():
            raise DataError(f"teacher predictions not found at {cfg.distill_targets!r}; write them with "
                            "training/distill.py or fix distill_targets")
    except (ConfigError, DataError, CheckpointError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    # Workers may run elsewhere in the cluster: local paths become absolute, bucket URIs stay as they are.
    as_given = dataclasses.replace(cfg)
    cfg.data = storage.absolute(cfg.data)
    if cfg.ferplus:
        cfg.ferplus = storage.absolute(cfg.ferplus)
    if cfg.init_from:
        cfg.init_from = str(Path(cfg.init_from).resolve())
    if cfg.distill_targets:
        cfg.distill_targets = str(Path(cfg.distill_targets).resolve())
    try:
        model_dir = run(cfg, out, as_given)
    except Exception as e:  # Ray wraps worker errors; show the cause in one line
        typer.echo(f"error: training failed: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}", err=True)
        raise typer.Exit(1)
    typer.echo(f"model exported to {model_dir}")
