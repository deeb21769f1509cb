"""Training in one process without Ray (training/worker.py's train_local, which training/gpu_teachers.py uses where
Ray is not installed): a real training loop on real FER-2013 faces, its per-epoch checkpoint and resume, and the
time budget that fits a run's epochs to a number of minutes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig
from training.worker import _fit_budget, train_local


def _cfg(fer_data_dir: Path, **kw) -> TrainConfig:
    base = dict(name="local", data=str(fer_data_dir), model="fer_vgg_tiny", epochs=2, batch_size=64, lr=0.05,
                limit_train=256, limit_eval=128, threads_per_worker=1)
    return TrainConfig(**{**base, **kw})


def _history(out: Path, name: str = "local") -> list[dict]:
    return [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines() if line]


def test_fit_budget_counts_the_epochs_that_fit_in_what_is_left() -> None:
    # 60 s budget, the first epoch took 10 s of it: 5 more of 10 s fit.
    assert _fit_budget(60, 10, [10], 100) == 6
    # After the second epoch (22 s used, 12 + 8 s of it in epochs): 38 s left holds 4 more at 8 s.
    assert _fit_budget(60, 22, [12, 8], 100) == 6
    # A second epoch slowed by other work on the machine (30 s) does not shorten the run: the faster pace counts.
    assert _fit_budget(120, 40, [10, 30], 100) == 2 + 8
    assert _fit_budget(600, 22, [12, 8], 30) == 30  # never more than configured
    # Over budget already: the epochs done so far, never fewer.
    assert _fit_budget(5, 10, [10], 100) == 1
    assert _fit_budget(5, 30, [10, 20], 100) == 2


def test_a_negative_time_budget_is_refused(fer_data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="time_budget_minutes"):
        _cfg(fer_data_dir, time_budget_minutes=-1)


def test_train_local_trains_exports_and_resumes(fer_data_dir: Path, tmp_path: Path, capsys) -> None:
    from fer_core.checkpoint import load_checkpoint

    out = tmp_path / "runs"
    model_dir = train_local(_cfg(fer_data_dir, epochs=1), out)
    assert [h["epoch"] for h in _history(out)] == [0]
    assert (out / "local" / "checkpoint" / "train_state.pt").is_file()
    model, meta, _ = load_checkpoint(model_dir)
    assert meta.arch == "fer_vgg_tiny" and meta.train_config["epochs"] == 1
    # The same run with more epochs resumes after the first instead of starting again.
    capsys.readouterr()
    train_local(_cfg(fer_data_dir, epochs=3), out)
    assert "resumed after epoch 1" in capsys.readouterr().out
    assert [h["epoch"] for h in _history(out)] == [0, 1, 2]
    # Nothing is left half-written beside the latest checkpoint.
    assert sorted(p.name for p in (out / "local").iterdir()) == ["checkpoint", "config.yaml", "metrics.jsonl", "model"]


def test_a_time_budget_shortens_the_run_and_holds_across_a_resume(fer_data_dir: Path, tmp_path: Path, capsys) -> None:
    from fer_core.checkpoint import load_checkpoint

    out = tmp_path / "runs"
    # A budget far shorter than one epoch: the run stops after the first epoch, and says why.
    model_dir = train_local(_cfg(fer_data_dir, epochs=5, time_budget_minutes=0.0005), out)
    log = capsys.readouterr().out
    assert "time budget 0.0005 min: 1 of 5 epochs fit" in log
    assert len(_history(out)) == 1
    _, meta, _ = load_checkpoint(model_dir)
    assert meta.train_config["epochs"] == 1  # the checkpoint records the epochs it was trained for
    # Running the same command again finds the run finished: the budget's count was kept.
    train_local(_cfg(fer_data_dir, epochs=5, time_budget_minutes=0.0005), out)
    assert "nothing to do" in capsys.readouterr().out and len(_history(out)) == 1


def test_a_generous_time_budget_changes_nothing(fer_data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"
    train_local(_cfg(fer_data_dir, epochs=2, time_budget_minutes=60), out)
    assert "time budget" not in capsys.readouterr().out
    assert len(_history(out)) == 2
