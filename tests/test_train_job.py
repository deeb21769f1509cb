"""End-to-end tests of the training scripts as users run them: train (Ray Train, 2 CPU workers), resume,
evaluate, export, and serve the result through the annotation job's classifier. Plus the CLI's failure paths.

The training runs start their own local Ray instance in a subprocess (token auth off for tests only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["training/train.py", "--config", "configs/train/debug.yaml"]


def _run(args: list[str], timeout_s: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # a fresh local instance, not whatever cluster the caller uses
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)


def _log(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ failure paths


def test_missing_data_and_bad_set_key_exit_1_with_one_error_line(tmp_path: Path) -> None:
    missing = _run([*TRAIN, "--out", str(tmp_path), "--data", str(tmp_path / "no_such_data")], timeout_s=120)
    assert missing.returncode == 1, _log(missing)
    lines = _error_lines(missing)
    assert len(lines) == 1 and lines[0].startswith("error: FER-2013 data not found"), _log(missing)

    bad_key = _run([*TRAIN, "--out", str(tmp_path), "--set", "learning_rate=0.1"], timeout_s=120)
    assert bad_key.returncode == 1, _log(bad_key)
    lines = _error_lines(bad_key)
    assert len(lines) == 1 and lines[0].startswith("error: unknown config keys ['learning_rate']"), _log(bad_key)

    bad_value = _run([*TRAIN, "--out", str(tmp_path), "--set", "epochs=soon"], timeout_s=120)
    assert bad_value.returncode == 1 and _error_lines(bad_value) == ["error: epochs: expected an integer, got 'soon'"]
    assert not (tmp_path / "debug").exists()  # nothing written before the config is valid


def test_init_from_that_does_not_fit_exits_1_before_training(tmp_path: Path, tiny_checkpoint: Path) -> None:
    missing = _run([*TRAIN, "--out", str(tmp_path), "--set", f"init_from={tmp_path / 'nothing'}"], timeout_s=120)
    assert missing.returncode == 1, _log(missing)
    lines = _error_lines(missing)
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint") and "does not exist" in lines[0], _log(missing)

    # tiny_checkpoint is a fer_vgg_tiny: asking for another architecture must be refused.
    other = _run([*TRAIN, "--out", str(tmp_path), "--set", f"init_from={tiny_checkpoint}", "--set", "model=fer_vgg_small"],
                 timeout_s=120)
    assert other.returncode == 1, _log(other)
    lines = _error_lines(other)
    assert len(lines) == 1 and "does not match the config (model 'fer_vgg_small' vs 'fer_vgg_tiny')" in lines[0], _log(other)
    assert not (tmp_path / "debug").exists()


def test_missing_teacher_predictions_exit_1_before_training(tmp_path: Path) -> None:
    r = _run([*TRAIN, "--out", str(tmp_path), "--set", f"distill_targets={tmp_path / 'absent.npz'}"], timeout_s=120)
    assert r.returncode == 1, _log(r)
    lines = _error_lines(r)
    assert len(lines) == 1 and lines[0].startswith("error: teacher predictions not found"), _log(r)
    assert not (tmp_path / "debug").exists()


@pytest.mark.slow
def test_a_robust_run_aligns_corrupts_and_distils(tmp_path: Path, fer_data_dir: Path) -> None:
    """One epoch of the debug config with aligned faces, every corruption and a teacher: the run trains under DDP
    and its exported checkpoint records all three, so the job serves it aligned."""
    from training.data import load_fer
    from training.distill import save_predictions

    fer = load_fer(fer_data_dir)
    probs = np.random.default_rng(0).dirichlet(np.ones(7), size=len(fer)).astype(np.float32)
    teacher = save_predictions(tmp_path / "teacher.npz", fer.row, fer.usage, probs, {"teachers": [], "ensemble_public_accuracy": None})
    sets = ["align=true", f"distill_targets={teacher}", "distill_weight=0.5", "distill_temperature=2"]
    sets += [f"aug_{name}_p=0.3" for name in ("roll", "crop_jitter", "gaussian_blur", "motion_blur", "downscale",
                                              "occlusion", "low_light", "noise", "jpeg")]
    r = _run([*TRAIN, "--out", str(tmp_path / "out"), *[a for s in sets for a in ("--set", s)]])
    assert r.returncode == 0, _log(r)
    assert "distilling" in r.stdout + r.stderr, _log(r)
    meta = json.loads((tmp_path / "out" / "debug" / "model" / "fer_checkpoint.json").read_text())
    assert meta["preprocessing"]["align"] is True
    assert meta["train_config"]["aug_jpeg_p"] == 0.3 and meta["train_config"]["distill_weight"] == 0.5
    assert meta["train_config"]["distill_targets"] == str(teacher)


def test_a_time_budget_holds_both_ddp_workers_to_the_same_epochs(tmp_path: Path) -> None:
    """Under DDP (the debug config's 2 workers) the budget's epoch count is agreed between the workers, so a run far
    over its budget stops after the first epoch on both instead of one waiting for the other."""
    r = _run([*TRAIN, "--out", str(tmp_path / "out"), "--epochs", "4", "--set", "time_budget_minutes=0.0001"])
    assert r.returncode == 0, _log(r)
    assert "1 of 4 epochs fit" in r.stdout + r.stderr, _log(r)
    meta = json.loads((tmp_path / "out" / "debug" / "model" / "fer_checkpoint.json").read_text())
    assert meta["train_config"]["epochs"] == 1
    assert len((tmp_path / "out" / "debug" / "metrics.jsonl").read_text().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ the real run


@dataclass
class TrainedRun:
    run_dir: Path
    first: subprocess.CompletedProcess
    first_history: list[dict]
    second: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, fer_data_dir: Path) -> TrainedRun:
    """`train.py --config configs/train/debug.yaml` for 1 epoch, then the same command with --epochs 2."""
    out = tmp_path_factory.mktemp("train_out")
    first = _run([*TRAIN, "--out", str(out)])
    assert first.returncode == 0, _log(first)
    run_dir = out / "debug"
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    second = _run([*TRAIN, "--out", str(out), "--epochs", "2"])
    assert second.returncode == 0, _log(second)
    return TrainedRun(run_dir, first, history, second)


@pytest.mark.slow
def test_first_run_checkpoints_and_exports(trained_run: TrainedRun) -> None:
    assert f"model exported to {trained_run.run_dir / 'model'}" in trained_run.first.stdout
    assert len(trained_run.first_history) == 1
    record = trained_run.first_history[0]
    assert record["epoch"] == 0 and {"train_loss", "train_accuracy", "public_accuracy", "public_accuracy_flip", "lr"} <= set(record)
    assert list(trained_run.run_dir.glob("checkpoint_*")), "Ray Train wrote no checkpoint"


@pytest.mark.slow
def test_second_run_resumes_after_epoch_1(trained_run: TrainedRun) -> None:
    import yaml

    log = trained_run.second.stdout + trained_run.second.stderr
    assert "resumed after epoch 1" in log, _log(trained_run.second)
    assert "epoch 2/2" in log and "epoch 1/2" not in log  # epoch 1 was not trained again
    history = [json.loads(line) for line in (trained_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[0] == trained_run.first_history[0]  # the first epoch's record is carried over, not redone
    config = yaml.safe_load((trained_run.run_dir / "config.yaml").read_text())
    assert config["epochs"] == 2 and config["model"] == "fer_vgg_tiny" and config["name"] == "debug"
    assert config["data"] == "../shared/data/fer2013"  # as debug.yaml gives it


@pytest.mark.slow
def test_weight_average_is_evaluated_every_epoch_and_carried_over_a_resume(trained_run: TrainedRun) -> None:
    """debug.yaml averages from epoch 1: the resumed run's average spans both epochs, so its state was restored."""
    history = [json.loads(line) for line in (trained_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["swa_epochs"] for h in history] == [[1, 1], [1, 2]]
    assert all(0 <= h["swa_public_accuracy"] <= 1 and 0 <= h["swa_public_accuracy_flip"] <= 1 for h in history)
    log = trained_run.second.stdout + trained_run.second.stderr
    assert "swa " in log and "epoch 2/2" in log


@pytest.mark.slow
def test_exported_model_is_self_describing(trained_run: TrainedRun) -> None:
    model_dir = trained_run.run_dir / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["fer_checkpoint.json", "model.safetensors"]
    meta = json.loads((model_dir / "fer_checkpoint.json").read_text())
    assert meta["arch"] == "fer_vgg_tiny" and meta["tta"] == "flip" and meta["name"] == "debug"
    assert meta["classes"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    # The best PublicTest epoch is exported; its config is the one it was trained under (1 or 2 epochs planned).
    assert meta["metrics"]["epoch"] in (0, 1) and meta["train_config"]["epochs"] == meta["metrics"]["epoch"] + 1
    # Paths are recorded as the config wrote them, not as this machine resolved them for the workers.
    assert meta["train_config"]["data"] == "../shared/data/fer2013"


@pytest.mark.slow
def test_a_new_run_starts_from_an_exported_model(trained_run: TrainedRun, tmp_path: Path) -> None:
    """init_from: train an exported model further under a new run name (here one epoch, learning rate ~0)."""
    from safetensors.numpy import load_file

    source = trained_run.run_dir / "model"
    warm = _run([*TRAIN, "--out", str(tmp_path), "--set", "name=warm", "--set", f"init_from={source}",
                 "--set", "lr=1e-9", "--set", "schedule=constant", "--set", "mixup_alpha=0", "--set", "aug_erase_p=0"])
    assert warm.returncode == 0, _log(warm)
    assert f"starting from the weights of {source}" in warm.stdout + warm.stderr, _log(warm)
    before, after = load_file(str(source / "model.safetensors")), load_file(str(tmp_path / "warm" / "model" / "model.safetensors"))
    # With a learning rate of 1e-9 the convolution weights are the source's (batch-norm statistics still move).
    convs = [k for k in before if k.endswith("weight") and before[k].ndim == 4]
    assert convs and all(np.allclose(before[k], after[k], atol=1e-6) for k in convs)


@pytest.mark.slow
def test_evaluate_and_export_the_trained_model(trained_run: TrainedRun, fer_data_dir: Path, tmp_path: Path) -> None:
    # The scripts' typer apps run in this process (same code as `python training/evaluate.py ...`, without paying
    # for another interpreter and torch import).
    from typer.testing import CliRunner

    from training import evaluate, export

    model_dir = trained_run.run_dir / "model"
    runner = CliRunner()
    result = runner.invoke(evaluate.app, [str(model_dir), "--data", str(fer_data_dir), "--ferplus",
                                          str(fer_data_dir / "fer2013new.csv"), "--out", str(tmp_path / "eval"),
                                          "--splits", "PublicTest", "--limit", "300", "--throughput-seconds", "0.5"])
    assert result.exit_code == 0, result.output
    assert "PublicTest: accuracy" in result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    public = metrics["splits"]["PublicTest"]
    assert public["n"] == 300 and metrics["tta"] == "flip"  # the checkpoint's TTA, as the annotation job runs it
    assert public["ferplus"]["n"] > 250
    assert metrics["training"]["epochs"] == 2  # metrics.jsonl found next to the model
    assert metrics["throughput"]["faces_per_s"] > 0
    for name in ("PublicTest_confusion.png", "PublicTest_confidence.png", "PublicTest_reliability.png", "training_curves.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 1000

    onnx_path = tmp_path / "model.onnx"
    exported = runner.invoke(export.app, [str(model_dir), "--onnx", str(onnx_path), "--data", str(fer_data_dir),
                                          "--real-faces", "64"])
    assert exported.exit_code == 0, exported.output
    assert onnx_path.is_file() and "real faces" in exported.output


@pytest.mark.slow
def test_annotation_classifier_serves_the_trained_model(trained_run: TrainedRun, yunet_model: Path, videos_dir: Path) -> None:
    """The job's path: decode a frame, detect the face, crop it with the checkpoint's margin, predict_proba."""
    import cv2

    from fer_core import load_classifier
    from fer_core.detect import create_detector
    from fer_core.preprocess import crop_faces

    classifier = load_classifier(trained_run.run_dir / "model", device="cpu")
    capture = cv2.VideoCapture(str(videos_dir / "posed_happy.mp4"))
    ok, frame_bgr = capture.read()
    capture.release()
    assert ok, "could not decode posed_happy.mp4"
    frame = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    faces = create_detector("yunet", yunet_model).detect(frame)
    assert len(faces) >= 1
    spec = classifier.meta.preprocessing
    crops = crop_faces(frame, faces.boxes[:1], margin=spec.crop_margin, out_size=2 * spec.input_size)
    probs = classifier.predict_proba(crops)
    assert probs.shape == (1, 7) and classifier.classes[3] == "happy"
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
