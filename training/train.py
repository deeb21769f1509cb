"""Train the emotion classifier with Ray Train (TorchTrainer, DDP over gloo on CPU, NCCL on GPUs).

    python training/train.py --config configs/train/debug.yaml --out runs/debug

Running the same command again resumes from the latest checkpoint under OUT/<name>/. At the end the best
epoch on PublicTest is exported as a self-describing checkpoint to OUT/<name>/model/.

The command (``fer-video train``) lives in :mod:`fer_video.train`; :func:`run` here is the Ray Train recipe it calls.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fer_core import storage  # noqa: E402
from fer_video.train import app, main  # noqa: E402, F401  (the command; this file runs it as a script)
from training.config import TrainConfig  # noqa: E402


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


if __name__ == "__main__":
    app()
