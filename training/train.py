"""Train the emotion classifier with Ray Train (TorchTrainer, DDP over gloo on CPU, NCCL on GPUs).

    python training/train.py --config configs/train/debug.yaml --out runs/debug

Running the same command again resumes from the latest checkpoint under OUT/<name>/. At the end the best
epoch on PublicTest is exported as a self-describing checkpoint to OUT/<name>/model/.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fer_core import storage  # noqa: E402
from fer_core.checkpoint import CheckpointError  # noqa: E402
from training.config import ConfigError, TrainConfig, load_config, parse_set  # noqa: E402
from training.data import DataError, check_source  # noqa: E402
from training.warmstart import check_init_from  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__)


def run(cfg: TrainConfig, out: str, as_given: TrainConfig | None = None) -> str:
    """Train (or resume) and export; returns the exported model's location.

    ``cfg`` carries the paths the workers open (absolute, or bucket URIs); ``as_given`` is the same config with the
    paths as the user wrote them, recorded in config.yaml and the checkpoints so they stay valid beside the project
    rather than naming this machine's folders (default: ``cfg``)."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.worker import HISTORY_FILE, RECORDED_KEY, train_worker

    out = storage.absolute(out)
    run_dir = storage.join(out, cfg.name)
    recorded = (as_given or cfg).to_dict()
    storage.write_text(storage.join(run_dir, "config.yaml"), yaml.safe_dump(recorded, sort_keys=True))
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={**cfg.to_dict(), RECORDED_KEY: recorded},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=out,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training produced no checkpoint")
    model_dir = storage.join(run_dir, "model")
    with result.checkpoint.as_directory() as d:
        storage.copy_dir(str(Path(d) / "best"), model_dir)
        storage.write_text(storage.join(run_dir, HISTORY_FILE), (Path(d) / HISTORY_FILE).read_text())
    return model_dir


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
    try:
        model_dir = run(cfg, out, as_given)
    except Exception as e:  # Ray wraps worker errors; show the cause in one line
        typer.echo(f"error: training failed: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}", err=True)
        raise typer.Exit(1)
    typer.echo(f"model exported to {model_dir}")


if __name__ == "__main__":
    app()
