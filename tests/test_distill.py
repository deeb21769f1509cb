"""Distillation: the loss, teacher prediction files, and a real training epoch that learns from a teacher."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.config import ConfigError, load_config
from training.data import DataError
from training.distill import distill_loss, ensemble_predictions, load_predictions, save_predictions, soften

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_loss_is_zero_when_the_student_matches_and_equals_t2_kl() -> None:
    logits = torch.randn(8, 7)
    for t in (1.0, 2.0, 4.0):
        teacher = torch.softmax(logits / t, -1)
        assert float(distill_loss(logits, teacher, t)) == pytest.approx(0.0, abs=1e-5)
    student = torch.randn(8, 7, requires_grad=True)
    teacher = soften(torch.log_softmax(logits, -1), 2.0)
    loss = distill_loss(student, teacher, 2.0)
    expected = F.kl_div(F.log_softmax(student / 2.0, -1), teacher, reduction="batchmean") * 4.0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


def test_soften_matches_logits_over_temperature() -> None:
    logits = torch.randn(5, 7)
    log_p = torch.log_softmax(logits, -1)
    assert torch.allclose(soften(log_p, 3.0), torch.softmax(logits / 3.0, -1), atol=1e-6)
    assert torch.allclose(soften(log_p, 1.0), torch.softmax(logits, -1), atol=1e-6)


def test_prediction_files_join_by_row_and_refuse_what_they_lack(tmp_path: Path) -> None:
    rows = np.array([5, 1, 9, 3])
    probs = np.random.default_rng(0).dirichlet(np.ones(7), size=4).astype(np.float32)
    path = save_predictions(tmp_path / "t.npz", rows, np.zeros(4, np.uint8), probs, {"teachers": []})
    log_p, record = load_predictions(path, np.array([9, 5]))
    assert record["format"] == "fer-teacher-predictions/1"
    assert np.allclose(np.exp(log_p), probs[[2, 0]], atol=2e-3)  # stored as float16 log-probabilities
    with pytest.raises(DataError, match="no predictions for 1 of the 2 training faces"):
        load_predictions(path, np.array([9, 7]))
    with pytest.raises(DataError, match="no row numbers"):
        load_predictions(path, np.array([-1, 5]))
    with pytest.raises(DataError, match="not found"):
        load_predictions(tmp_path / "absent.npz", rows)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="not a teacher-predictions file"):
        load_predictions(tmp_path / "other.npz", rows)


def test_config_keys_are_validated() -> None:
    cfg = load_config(None, {"distill_targets": "teachers/x.npz", "distill_weight": "0.7", "distill_temperature": "3"})
    assert (cfg.distill_targets, cfg.distill_weight, cfg.distill_temperature) == ("teachers/x.npz", 0.7, 3.0)
    with pytest.raises(ConfigError, match="distill_weight: must be in"):
        load_config(None, {"distill_weight": "1.5"})
    with pytest.raises(ConfigError, match="distill_temperature: must be > 0"):
        load_config(None, {"distill_temperature": "0"})


def test_an_ensemble_is_scored_on_publictest_and_its_mean_written(fer_data_dir, tiny_checkpoint, tmp_path: Path) -> None:
    from fer_core.checkpoint import default_model_dir
    from training.data import load_fer

    data = load_fer(fer_data_dir, splits=["PublicTest"]).subset(300)
    probs, record = ensemble_predictions([str(default_model_dir()), str(tiny_checkpoint)], data, device=torch.device("cpu"))
    assert probs.shape == (300, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)
    shipped, tiny = record["teachers"]
    assert shipped["public_accuracy_flip"] > 0.6 and tiny["public_accuracy_flip"] < 0.4  # trained vs untrained
    assert record["ensemble_public_accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == data.labels)))


def test_a_committed_predictions_file_is_a_member_as_its_model_was(fer_data_dir, tiny_checkpoint, tmp_path: Path) -> None:
    from training.data import load_fer
    from training.distill import member_predictions, save_predictions

    data = load_fer(fer_data_dir, splits=["PublicTest"]).subset(300)
    cpu = torch.device("cpu")
    probs, record = ensemble_predictions([str(tiny_checkpoint)], data, device=cpu)
    written = save_predictions(tmp_path / "tiny.npz", data.row, data.usage, probs, record)
    again, member = member_predictions(str(written), data, device=cpu)
    # Stored as float16 log-probabilities: the same answers, probabilities within float16 rounding.
    assert np.allclose(again, probs, atol=2e-3) and (again.argmax(1) == probs.argmax(1)).mean() > 0.99
    assert member["name"] == "tiny-test" and member["public_accuracy_flip"] == pytest.approx(
        record["teachers"][0]["public_accuracy_flip"], abs=0.01)
    # A model and a file ensembled together: the mean of the two.
    both, mixed = ensemble_predictions([str(tiny_checkpoint), str(written)], data, device=cpu)
    assert np.allclose(both, (probs + again) / 2, atol=1e-6) and len(mixed["teachers"]) == 2
    with pytest.raises(DataError, match="not found"):
        member_predictions(str(tmp_path / "absent.npz"), data, device=cpu)


def test_an_epoch_with_distill_weight_1_pulls_the_student_to_the_teacher() -> None:
    """A real training loop on random faces whose only signal is the teacher: KL to the teacher falls."""
    from fer_core.models import create_model
    from training.loop import Schedule, build_optimizer, train_one_epoch, train_preset_of

    torch.manual_seed(0)
    cfg = load_config(None, {"model": "fer_vgg_tiny", "epochs": 6, "batch_size": 32, "lr": 0.05, "schedule": "constant",
                             "mix_prob": 0, "distill_targets": "x", "distill_weight": 1.0, "distill_temperature": 1.0,
                             "aug_pad": 0, "aug_flip": False, "aug_rotate_deg": 0, "aug_scale": 0, "aug_brightness": 0,
                             "aug_contrast": 0, "aug_erase_p": 0})
    images = torch.randint(0, 256, (128, 1, 48, 48), dtype=torch.uint8)
    # The teacher says: class 3 when the face's left half is brighter, class 5 otherwise.
    brighter = images[:, 0, :, :24].float().mean((1, 2)) > images[:, 0, :, 24:].float().mean((1, 2))
    teacher = torch.full((128, 7), 0.01)
    teacher[brighter, 3], teacher[~brighter, 5] = 0.94, 0.94
    labels = torch.eye(7)[torch.zeros(128, dtype=torch.long)]  # labels all say class 0: ignored at weight 1
    model = create_model("fer_vgg_tiny")
    optimizer = build_optimizer(cfg, model)
    schedule = Schedule(cfg, optimizer, steps_per_epoch=4)
    preset = train_preset_of(cfg)
    losses = [train_one_epoch(model, optimizer, schedule, preset, images, labels, cfg=cfg, batch_size=32, epoch=e,
                              rank=0, world_size=1, device=torch.device("cpu"), teacher=teacher).loss for e in range(6)]
    assert losses[-1] < losses[0] * 0.8, losses
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.slow
def test_the_gpu_teacher_script_runs_end_to_end_on_the_cpu(fer_data_dir, tmp_path: Path) -> None:
    """training/gpu_teachers.py at toy size (--cpu, the debug config, 1 epoch): a teacher trained with Ray Train, its
    export, the ensemble's predictions in the distillation format and the summary."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "teachers"
    r = subprocess.run([sys.executable, "training/gpu_teachers.py", str(fer_data_dir), "--out", str(out), "--cpu",
                        "--teacher", "debug", "--epochs", "1"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [t["name"] for t in summary["teachers"]] == ["debug"] and summary["teachers"][0]["epochs"] == 1
    assert (out / "debug" / "model" / "fer_checkpoint.json").is_file()
    from training.data import load_fer

    rows = load_fer(fer_data_dir, splits=["Training"]).row
    log_p, record = load_predictions(out / "teachers.npz", rows)
    assert log_p.shape == (len(rows), 7) and record["ensemble_public_accuracy"] == summary["ensemble_public_accuracy"]


def test_the_gpu_teacher_script_says_when_there_is_no_gpu(fer_data_dir) -> None:
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "training/gpu_teachers.py", str(fer_data_dir)], cwd=repo, capture_output=True,
                       text=True, timeout=120)
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1 and "no CUDA GPU is visible" in lines[0], r.stdout + r.stderr


def test_the_teacher_command_gives_one_line_errors(tmp_path: Path, fer_data_dir) -> None:
    from typer.testing import CliRunner

    from training.distill import app

    for args, message in ((["--teacher", str(tmp_path / "absent")], "does not exist"),
                          (["--teacher", "fer_core/weights/default", "--data", str(tmp_path / "nodata")], "FER-2013 data not found")):
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "t.npz")] + ([] if "--data" in args else ["--data", str(fer_data_dir)]))
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.slow
def test_the_gpu_teacher_script_runs_without_ray_and_distils_students(fer_data_dir, tmp_path: Path) -> None:
    """--backend local (the GPU machine has no Ray): the same training code in plain processes, with Ray made
    unimportable; then a student distilled from the ensemble under a time budget."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    blocker = tmp_path / "noray" / "ray"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("Ray is not installed here")\n')
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    out = tmp_path / "gpu_ensemble_t"
    r = subprocess.run([sys.executable, "training/gpu_teachers.py", str(fer_data_dir), "--out", str(out), "--cpu",
                        "--backend", "local", "--teacher", "debug", "--student", "student_kd_scratch",
                        "--student-minutes", "0.0005", "--set", "limit_train=128", "--set", "limit_eval=64"],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "local"
    assert [t["name"] for t in summary["teachers"]] == ["debug"]
    assert [s["name"] for s in summary["students"]] == ["student_kd_scratch"]
    assert summary["students"][0]["epochs"] == 1  # the budget held the 300-epoch config to one epoch
    assert (out / "debug" / "predictions.npz").is_file() and (out / "teachers.npz").is_file()
    meta = json.loads((out / "student_kd_scratch" / "model" / "fer_checkpoint.json").read_text())
    # The student's record names the ensemble where it is committed, not this machine's folder.
    assert meta["train_config"]["distill_targets"] == "teachers/gpu_ensemble_t.npz"
    assert meta["train_config"]["epochs"] == 1 and meta["arch"] == "fer_vgg_small"
    assert "distilling" in (out / "student_kd_scratch.log").read_text()


def test_the_gpu_teacher_script_names_a_bad_backend_or_config(fer_data_dir, tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    for args, message in ((["--backend", "spark"], "--backend must be ray, local or auto"),
                          (["--teacher", "no_such_config"], "no_such_config")):
        r = subprocess.run([sys.executable, "training/gpu_teachers.py", str(fer_data_dir), "--cpu", "--out",
                            str(tmp_path / "o"), *args], cwd=repo, capture_output=True, text=True, timeout=120)
        lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
        assert r.returncode == 1 and len(lines) == 1 and message in lines[0], r.stdout + r.stderr


def test_save_members_writes_each_checkpoint_teachers_own_predictions(tiny_checkpoint, tmp_path: Path) -> None:
    import csv

    from typer.testing import CliRunner

    from training.data import load_fer
    from training.distill import app, load_predictions, member_file

    rng = np.random.default_rng(0)
    data_csv = tmp_path / "fer2013.csv"
    with data_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("emotion", "pixels", "Usage"))
        for i in range(24):
            writer.writerow([i % 7, " ".join(map(str, rng.integers(0, 256, 48 * 48))), ("Training", "PublicTest")[i % 2]])
    fer = load_fer(data_csv)
    run_model = tmp_path / "runs" / "teacher_t" / "model"  # an exported run, as training/train.py writes it
    shutil.copytree(tiny_checkpoint, run_model)
    committed = tmp_path / "committed.npz"
    assert CliRunner().invoke(app, ["--teacher", str(tiny_checkpoint), "--data", str(data_csv), "--out",
                                    str(committed)]).exit_code == 0
    members = tmp_path / "members"
    result = CliRunner().invoke(app, ["--teacher", str(run_model), "--teacher", str(committed), "--data", str(data_csv),
                                      "--out", str(tmp_path / "ensemble.npz"), "--save-members", str(members),
                                      "--subsets"])
    assert result.exit_code == 0, result.output
    assert member_file(str(run_model), members) == members / "teacher_t.npz"
    assert sorted(p.name for p in members.iterdir()) == ["teacher_t.npz"]  # a file member is already committed
    own, record = load_predictions(members / "teacher_t.npz", fer.row)
    again, _ = load_predictions(committed, fer.row)  # the same weights, written by the first command
    assert np.allclose(own, again, atol=1e-3)
    assert [m["name"] for m in record["teachers"]] == ["tiny-test"]
    assert "its own predictions written to" in result.output
    assert "subset tiny-test + tiny-test: PublicTest" in result.output  # the one pair, from the same predictions


def test_subsets_score_every_combination_best_first(fer_data_dir) -> None:
    from training.data import load_fer
    from training.distill import subset_accuracies

    data = load_fer(fer_data_dir, splits=["PublicTest"]).subset(200)
    eye = np.eye(7, dtype=np.float32)
    right = 0.8 * eye[data.labels] + 0.2 / 7  # always right, less sure than `wrong` is wrong
    wrong = eye[(data.labels + 1) % 7]
    half = np.where(np.arange(200)[:, None] < 100, right, wrong)  # right on the first half of the faces
    scored = subset_accuracies([right, wrong, half], data)
    assert scored == [((0, 2), 0.5), ((0, 1, 2), 0.5), ((0, 1), 0.0), ((1, 2), 0.0)]  # ties: fewer members first
    assert subset_accuracies([right], data) == []  # single members are not subsets
